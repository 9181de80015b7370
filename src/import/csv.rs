//! CSV seed files (RFC 4180 quoting, UTF-8 with or without a byte order mark): a header row
//! naming the columns, then one token per row. Columns are matched by name, case-insensitively,
//! in any order: `serialNumber`, `secret` (hex) or `secretBase32`, `type`, `otpLength`, and
//! optionally `hashAlgorithm`, `counter` (HOTP) and `timeStep` (TOTP). An empty cell is an absent
//! value. Data rows are numbered from 1 (the header is not a row); messages also give the line.
//! Cells are read one at a time and counted as they come, so that a record costs at most its
//! header's number of cells of at most `MAX_CELL` bytes each, however long it is.

use csv_core::ReadFieldResult;
use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

use super::{invalid, printable, shown_serial, ImportError, RowFields};
use crate::domain::job::CreateItem;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    SerialNumber,
    Secret,
    SecretBase32,
    Type,
    OtpLength,
    HashAlgorithm,
    Counter,
    TimeStep,
}

const COLUMNS: [(&str, Column); 8] = [
    ("serialNumber", Column::SerialNumber),
    ("secret", Column::Secret),
    ("secretBase32", Column::SecretBase32),
    ("type", Column::Type),
    ("otpLength", Column::OtpLength),
    ("hashAlgorithm", Column::HashAlgorithm),
    ("counter", Column::Counter),
    ("timeStep", Column::TimeStep),
];

/// Longest unknown column name repeated in a message.
const SHOWN_NAME_MAX: usize = 20;

const HEADER_HELP: &str = "the first line must be the header row naming the columns \
    serialNumber, secret (hex) or secretBase32, type, otpLength, and optionally hashAlgorithm, \
    counter, timeStep";

/// Longest cell kept, in bytes: a longer one makes its row INVALID. The longest secret the token
/// rules take (200 hex digits) fills a fifth of it, even written with spaces.
const MAX_CELL: usize = 1024;

/// Header cells kept: a header names at most seven columns, and one of more cells than this is
/// refused without its names being read.
const MAX_HEADER_CELLS: usize = 32;

/// Reads a CSV file into job items, refusing files of more than `max_rows` data rows.
pub fn parse(body: &[u8], max_rows: usize) -> Result<Vec<CreateItem>, ImportError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut records = Records::new(body);
    let mut record = Record::default();
    if !records.next(&mut record, MAX_HEADER_CELLS) {
        return Err(ImportError::Unreadable(format!(
            "The file is empty: {HEADER_HELP}."
        )));
    }
    let columns = header(&record)?;
    let name_of = |path: &str| column_name(path, &columns);

    let mut items = Vec::new();
    let mut lines = LineCounter::default();
    // A row is kept to the header's number of cells: any more only make it INVALID.
    while records.next(&mut record, columns.len()) {
        if items.len() == max_rows {
            return Err(ImportError::TooManyRows { max: max_rows });
        }
        let row_number = items.len() as i64 + 1;
        let line = lines.line_at(body, record.start);
        items.push(row(&record, &columns, row_number, line, &name_of));
    }
    if items.is_empty() {
        return Err(ImportError::Unreadable(
            "The file has a header row but no data rows.".into(),
        ));
    }
    Ok(items)
}

/// One record: its first cells (as many as the reader was asked to keep), and how many it had.
#[derive(Default)]
struct Record {
    /// The kept cells, one after the other; each ends where `ends` says.
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Cells of the record, kept or not.
    cells: usize,
    /// A kept cell was longer than `MAX_CELL` (and is kept empty).
    too_long: bool,
    /// Offset in the body where reading the record began.
    start: usize,
}

/// The kept cells may hold a secret.
impl Drop for Record {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl Record {
    fn kept(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, end)| &self.bytes[start..*end])
    }
}

/// The records of a body, read cell by cell (RFC 4180 quoting; CRLF, LF or CR line ends; blank
/// lines skipped). Cells past those kept are counted and dropped as they are read.
struct Records<'a> {
    body: &'a [u8],
    /// Bytes of `body` read so far.
    at: usize,
    reader: csv_core::Reader,
}

impl<'a> Records<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self {
            body,
            at: 0,
            reader: csv_core::Reader::new(),
        }
    }

    /// Reads the next record into `record`, keeping its first `keep` cells; false at the end.
    fn next(&mut self, record: &mut Record, keep: usize) -> bool {
        record.bytes.clear();
        record.ends.clear();
        record.cells = 0;
        record.too_long = false;
        record.start = self.at;
        let mut out = [0u8; 1024];
        // Bytes of the cell being read.
        let mut cell = 0usize;
        loop {
            // An empty input, once the body is read, tells the reader that it has ended.
            let (result, read, written) = self.reader.read_field(&self.body[self.at..], &mut out);
            self.at += read;
            let kept = record.cells < keep;
            if kept {
                cell += written;
                if cell <= MAX_CELL {
                    record.bytes.extend_from_slice(&out[..written]);
                }
            }
            match result {
                ReadFieldResult::InputEmpty | ReadFieldResult::OutputFull => {}
                ReadFieldResult::Field { record_end } => {
                    if kept {
                        if cell > MAX_CELL {
                            record
                                .bytes
                                .truncate(record.ends.last().copied().unwrap_or(0));
                            record.too_long = true;
                        }
                        record.ends.push(record.bytes.len());
                    }
                    record.cells += 1;
                    cell = 0;
                    if record_end {
                        return true;
                    }
                }
                ReadFieldResult::End => return false,
            }
        }
    }
}

/// Lines of record starts, counted incrementally (records come in order). The reader's own line
/// count lags behind after a CRLF, so lines are counted here from byte offsets.
struct LineCounter {
    offset: usize,
    line: usize,
}

impl Default for LineCounter {
    fn default() -> Self {
        Self { offset: 0, line: 1 }
    }
}

impl LineCounter {
    fn line_at(&mut self, body: &[u8], mut offset: usize) -> usize {
        // A record may be reported from the line break that ended the one before it.
        while matches!(body.get(offset), Some(b'\r' | b'\n')) {
            offset += 1;
        }
        let offset = offset.min(body.len()).max(self.offset);
        self.line += body[self.offset..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        self.offset = offset;
        self.line
    }
}

fn header(record: &Record) -> Result<Vec<Column>, ImportError> {
    if record.cells > MAX_HEADER_CELLS {
        return Err(ImportError::at_line(
            1,
            format!("the header row has {} cells: {HEADER_HELP}.", record.cells),
        ));
    }
    if record.too_long {
        return Err(ImportError::at_line(
            1,
            format!("a cell of the header row is longer than {MAX_CELL} bytes: {HEADER_HELP}."),
        ));
    }
    let mut columns = Vec::with_capacity(record.ends.len());
    let mut unknown = Vec::new();
    for cell in record.kept() {
        let name = std::str::from_utf8(cell)
            .map_err(|_| ImportError::at_line(1, "the header row is not UTF-8 text."))?
            .trim();
        match COLUMNS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((n, c)) if columns.contains(c) => {
                return Err(ImportError::at_line(
                    1,
                    format!("the column {n} appears twice in the header row."),
                ))
            }
            Some((_, c)) => columns.push(*c),
            None => unknown.push(name),
        }
    }
    if columns.is_empty() {
        // Not a header at all (perhaps a data row): its cells are not repeated, since they may
        // hold a secret.
        return Err(ImportError::at_line(1, format!("{HEADER_HELP}.")));
    }
    if !unknown.is_empty() {
        // Names are echoed only when too short to be a secret (128 bits take 26 base32 digits).
        let shown: Vec<String> = unknown
            .iter()
            .map(|n| match n.chars().count() {
                0 => "(an empty name)".to_string(),
                1..=SHOWN_NAME_MAX => format!("{:?}", printable(n)),
                len => format!("(a name of {len} characters)"),
            })
            .collect();
        return Err(ImportError::at_line(
            1,
            format!("unknown column(s) {}: {HEADER_HELP}.", shown.join(", ")),
        ));
    }
    if columns.contains(&Column::Secret) && columns.contains(&Column::SecretBase32) {
        return Err(ImportError::at_line(
            1,
            "the header row has both secret and secretBase32; give one of them.",
        ));
    }
    let required = [
        ("serialNumber", Column::SerialNumber),
        ("type", Column::Type),
        ("otpLength", Column::OtpLength),
    ];
    let mut missing: Vec<&str> = required
        .iter()
        .filter(|(_, c)| !columns.contains(c))
        .map(|(n, _)| *n)
        .collect();
    if !columns.contains(&Column::Secret) && !columns.contains(&Column::SecretBase32) {
        // After serialNumber when that is missing too, as the header lists them.
        let at = usize::from(!columns.contains(&Column::SerialNumber));
        missing.insert(at, "secret (or secretBase32)");
    }
    if !missing.is_empty() {
        return Err(ImportError::at_line(
            1,
            format!(
                "the header row lacks the column(s) {}: {HEADER_HELP}.",
                missing.join(", ")
            ),
        ));
    }
    Ok(columns)
}

/// The CSV column a token field path came from.
fn column_name(path: &str, columns: &[Column]) -> String {
    match path {
        "secret" if columns.contains(&Column::SecretBase32) => "secretBase32",
        "hotp" | "hotp.counter" => "counter",
        "totp" | "totp.timeStep" => "timeStep",
        other => other,
    }
    .to_string()
}

fn row(
    record: &Record,
    columns: &[Column],
    row_number: i64,
    line: usize,
    name_of: &dyn Fn(&str) -> String,
) -> CreateItem {
    let context = format!("line {line}");
    // No cell is echoed: in a shifted row the serial's place may hold the secret.
    if record.cells != columns.len() {
        return invalid(
            row_number,
            None,
            &context,
            format!(
                "the row has {} fields, the header row {}",
                record.cells,
                columns.len()
            ),
        );
    }
    if record.too_long {
        return invalid(
            row_number,
            None,
            &context,
            format!("a field is longer than {MAX_CELL} bytes"),
        );
    }
    let cells: Option<Vec<&str>> = record
        .kept()
        .map(|c| std::str::from_utf8(c).ok().map(str::trim))
        .collect();
    let Some(cells) = cells else {
        return invalid(
            row_number,
            None,
            &context,
            "the row is not UTF-8 text".into(),
        );
    };

    let serial = columns
        .iter()
        .position(|c| *c == Column::SerialNumber)
        .map(|i| cells[i])
        .filter(|s| !s.is_empty())
        .and_then(shown_serial);
    let mut fields = RowFields::default();
    for (column, cell) in columns.iter().zip(cells) {
        if cell.is_empty() {
            continue;
        }
        match column {
            Column::SerialNumber => fields.set_str("serialNumber", cell),
            Column::Secret => fields.set_str("secret", cell),
            Column::SecretBase32 => match decode_base32(cell) {
                Some(bytes) => fields.set_secret(&bytes),
                None => {
                    return invalid(
                        row_number,
                        serial,
                        &context,
                        "secretBase32 must be base32 (RFC 4648: letters A-Z and digits 2-7)".into(),
                    )
                }
            },
            Column::Type => fields.set_str("type", cell),
            Column::OtpLength => fields.set("otpLength", number(cell)),
            Column::HashAlgorithm => fields.set_str("hashAlgorithm", cell),
            Column::Counter => fields.set_nested("hotp", "counter", number(cell)),
            Column::TimeStep => fields.set_nested("totp", "timeStep", number(cell)),
        }
    }
    fields.into_item(row_number, &context, name_of)
}

/// An integer cell as a JSON number; anything else stays text, for the token rules to refuse
/// with their own message.
fn number(cell: &str) -> Value {
    cell.parse::<i64>()
        .map(Value::from)
        .or_else(|_| cell.parse::<u64>().map(Value::from))
        .unwrap_or_else(|_| Value::String(cell.to_string()))
}

/// Base32 as authenticator apps and vendors write it: either case, padding and spaces optional.
fn decode_base32(cell: &str) -> Option<Zeroizing<Vec<u8>>> {
    let normalized: Zeroizing<String> = Zeroizing::new(
        cell.chars()
            .filter(|c| !c.is_whitespace() && *c != '=' && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect(),
    );
    data_encoding::BASE32_NOPAD
        .decode(normalized.as_bytes())
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "serialNumber,secret,type,otpLength,hashAlgorithm,counter,timeStep\n";
    const SECRET: &str = "3132333435363738393031323334353637383930";

    fn tokens(items: &[CreateItem]) -> Vec<(i64, String)> {
        items
            .iter()
            .map(|i| match i {
                CreateItem::Token(t) => (t.row_number.unwrap(), t.serial_number.as_str().into()),
                CreateItem::Invalid(r) => (r.row_number, format!("INVALID {}", r.message)),
            })
            .collect()
    }

    #[test]
    fn reads_quoted_cells_bom_and_crlf() {
        let body = format!(
            "\u{feff}{}\r\n\"A1\",{SECRET},HOTP,6,,\"5\",\r\n\"A\"\"2\",{SECRET},TOTP,8,HmacSHA256,,60\r\n",
            HEADER.trim_end()
        );
        let items = parse(body.as_bytes(), 10).unwrap();
        assert_eq!(items.len(), 2);
        let t = items[0].token();
        assert_eq!(t.serial_number.as_str(), "A1");
        assert_eq!(t.kind, crate::domain::TokenKind::Hotp { counter: 5 });
        assert_eq!(t.row_number, Some(1));
        // A quoted quote is part of the serial, which the rules then refuse.
        let r = items[1].invalid();
        assert_eq!(r.row_number, 2);
        assert_eq!(r.serial_number.as_deref(), Some("A\"2"));
        assert!(
            r.message.starts_with("line 3: serialNumber must contain"),
            "{r:?}"
        );
    }

    #[test]
    fn base32_column_and_any_column_order() {
        let body = "type,secretBase32,serialNumber,otpLength\nHOTP,gezd gnbv gy3t qojq gezd gnbv gy3t qojq,B1,6\nHOTP,not*base32,B2,6\n";
        let items = parse(body.as_bytes(), 10).unwrap();
        assert_eq!(items[0].token().secret.expose(), b"12345678901234567890");
        let rows = tokens(&items);
        assert_eq!(
            rows[1],
            (
                2,
                "INVALID line 3: secretBase32 must be base32 (RFC 4648: letters A-Z and digits 2-7)"
                    .into()
            )
        );
    }

    #[test]
    fn bad_rows_are_invalid_with_line_numbers_and_column_names() {
        let body = format!(
            "{HEADER}C1,{SECRET},HOTP,7,,,\n\"C\n2\",{SECRET},TOTP,6,,3,\nC3,{SECRET}\nC4,zz,HOTP,six,,-1,\n,{SECRET},HOTP,6,,,\n"
        );
        let rows = tokens(&parse(body.as_bytes(), 10).unwrap());
        assert_eq!(
            rows,
            [
                (1, "INVALID line 2: otpLength must be 6 or 8".to_string()),
                (
                    2,
                    "INVALID line 3: serialNumber must contain ASCII letters and digits only; counter is not allowed on a TOTP token".into()
                ),
                (3, "INVALID line 5: the row has 2 fields, the header row 7".into()),
                (
                    4,
                    "INVALID line 6: secret must be 32 to 200 hex digits (128 bits at least); otpLength must be 6 or 8; counter must be an integer from 0 to 9223372036854775807".into()
                ),
                (5, "INVALID line 7: serialNumber is required".into()),
            ]
        );
        for item in parse(body.as_bytes(), 10).unwrap() {
            if let CreateItem::Invalid(r) = item {
                assert!(!r.message.contains(SECRET));
            }
        }
    }

    /// A row missing its serial cell puts the secret in the serial's place: it must not come
    /// back as the row's serial number (nor be stored as one).
    #[test]
    fn a_shifted_row_echoes_no_cell() {
        let body = format!(
            "serialNumber,secret,type,otpLength\n{SECRET},HOTP,6\nS2,{SECRET},HOTP,6,extra\n"
        );
        for item in parse(body.as_bytes(), 10).unwrap() {
            let r = item.invalid();
            assert_eq!(r.serial_number, None, "{r:?}");
            assert!(r.message.contains("the row has"), "{r:?}");
            assert!(!r.message.contains(SECRET));
        }
    }

    /// A record keeps at most the cells asked for, each of at most MAX_CELL bytes, however many
    /// and however long its cells are: the rest are counted, not collected.
    #[test]
    fn records_keep_a_bounded_part_of_any_row() {
        let mut body = b"S1,".to_vec();
        body.extend(std::iter::repeat_n(b'A', 100_000));
        body.extend(std::iter::repeat_n(b',', 100_000));
        body.extend(b"\r\n\r\nS2,\"a\"\"b\"\n");
        let mut records = Records::new(&body);
        let mut record = Record::default();
        assert!(records.next(&mut record, 7));
        assert_eq!((record.cells, record.ends.len()), (100_002, 7));
        assert!(record.too_long);
        assert_eq!(record.kept().next(), Some(&b"S1"[..]));
        assert!(
            record.bytes.capacity() <= 7 * MAX_CELL,
            "{}",
            record.bytes.capacity()
        );
        assert!(records.next(&mut record, 7));
        assert_eq!(record.kept().collect::<Vec<_>>(), [&b"S2"[..], b"a\"b"]);
        assert!(!record.too_long);
        assert!(!records.next(&mut record, 7));
    }

    #[test]
    fn long_rows_and_cells_are_invalid_and_echo_nothing() {
        let long = "A".repeat(MAX_CELL + 1);
        let body = format!(
            "{HEADER}S1,{SECRET},HOTP,6,,,{}\nS2,{long},HOTP,6,,,\nS3,{},HOTP,6,,,\n",
            ",".repeat(1000),
            "A".repeat(MAX_CELL)
        );
        let items = parse(body.as_bytes(), 10).unwrap();
        let rows: Vec<_> = items.iter().map(CreateItem::invalid).collect();
        assert_eq!(
            rows[0].message,
            "line 2: the row has 1007 fields, the header row 7"
        );
        assert_eq!(rows[1].message, "line 3: a field is longer than 1024 bytes");
        assert_eq!(
            (
                rows[0].serial_number.as_deref(),
                rows[1].serial_number.as_deref()
            ),
            (None, None)
        );
        // A cell of MAX_CELL bytes is read, and the token rules judge it.
        assert!(
            rows[2].message.starts_with("line 4: secret must be"),
            "{:?}",
            rows[2]
        );
    }

    #[test]
    fn files_without_a_usable_header_are_refused() {
        let cases = [
            ("", "The file is empty"),
            (
                &format!("A1,{SECRET},HOTP,6\n") as &str,
                "Line 1: the first line must be the header row",
            ),
            (
                "serialNumber,secret,type,otpLength,colour\n",
                "Line 1: unknown column(s) \"colour\"",
            ),
            (
                &format!("serialNumber,secret,type,otpLength{SECRET}\n"),
                "(a name of 49 characters)",
            ),
            (
                "serialNumber,secret,type\n",
                "lacks the column(s) otpLength",
            ),
            (
                "serialNumber,type,otpLength\n",
                "lacks the column(s) secret (or secretBase32)",
            ),
            (
                "type,otpLength\n",
                "lacks the column(s) serialNumber, secret (or secretBase32)",
            ),
            (
                "serialNumber,secret,secretBase32,type,otpLength\n",
                "both secret and secretBase32",
            ),
            (
                "serialNumber,SERIALNUMBER,secret,type,otpLength\n",
                "appears twice",
            ),
            (HEADER, "no data rows"),
            (
                &format!("serialNumber,secret,type,otpLength{}\n", ",".repeat(29)),
                "Line 1: the header row has 33 cells",
            ),
            (
                &format!("serialNumber,secret,type,otpLength,{}\n", "x".repeat(2000)),
                "Line 1: a cell of the header row is longer than 1024 bytes",
            ),
        ];
        for (body, want) in cases {
            let err = parse(body.as_bytes(), 10).unwrap_err().to_string();
            assert!(err.contains(want), "{body:?}: {err}");
            assert!(!err.contains(SECRET));
        }
    }

    #[test]
    fn more_rows_than_allowed_is_an_error() {
        let body = format!("{HEADER}A1,{SECRET},HOTP,6,,,\nA2,{SECRET},HOTP,6,,,\n");
        assert_eq!(
            parse(body.as_bytes(), 1).unwrap_err(),
            ImportError::TooManyRows { max: 1 }
        );
        assert_eq!(parse(body.as_bytes(), 2).unwrap().len(), 2);
    }
}
