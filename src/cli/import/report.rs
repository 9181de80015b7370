//! `--report`: the rows of the file that were not created, as CSV with a header row, in file
//! order. A row's secret never appears: only the service's masked form of it.

use std::path::Path;

use super::api::ResultRow;

pub const HEADER: [&str; 7] = [
    "rowNumber",
    "index",
    "serialNumber",
    "outcome",
    "tokenId",
    "maskedSecret",
    "message",
];

/// Writes the report (a header alone when every row was created).
pub fn write(path: &Path, rows: &[ResultRow]) -> Result<(), String> {
    let fail =
        |e: &dyn std::fmt::Display| format!("cannot write the report {}: {e}", path.display());
    let mut out = csv::Writer::from_path(path).map_err(|e| fail(&e))?;
    out.write_record(HEADER).map_err(|e| fail(&e))?;
    for row in rows {
        out.write_record([
            row.row_number.map(|n| n.to_string()).unwrap_or_default(),
            row.index.to_string(),
            row.serial_number.clone().unwrap_or_default(),
            row.outcome.clone(),
            row.token_id.map(|t| t.to_string()).unwrap_or_default(),
            row.masked_secret.clone().unwrap_or_default(),
            row.message.clone().unwrap_or_default(),
        ])
        .map_err(|e| fail(&e))?;
    }
    out.flush().map_err(|e| fail(&e))
}
