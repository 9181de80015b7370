-- Job results are written once per chunk and read a page at a time. Random token ids do not
-- compress, so they are stored as they are; the rest (outcome codes, serials, masked secrets,
-- row numbers, messages) compress well, and lz4 does it at a fraction of pglz's CPU (a 1,000-item
-- chunk's results: about 0.2 against 0.75 ms). A server built without lz4 keeps pglz.
alter table job_result_chunks alter column token_ids set storage external;

do $$
begin
    alter table job_result_chunks
        alter column outcomes set compression lz4,
        alter column serial_numbers set compression lz4,
        alter column row_numbers set compression lz4,
        alter column masked_secrets set compression lz4,
        alter column messages set compression lz4;
exception when feature_not_supported then
    raise notice 'this server has no lz4: job results stay compressed with pglz';
end
$$;
