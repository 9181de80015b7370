//! `--report`: the rows of the file that were not created, as CSV with a header row, in file
//! order. A row's secret never appears: only the service's masked form of it.

use std::fs::File;
use std::path::{Path, PathBuf};

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

/// The report file, created (and so checked) before anything is uploaded.
pub struct Report {
    path: PathBuf,
    out: csv::Writer<File>,
}

impl Report {
    pub fn create(path: &Path) -> Result<Self, String> {
        let file = File::create(path).map_err(|e| fail(path, &e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: csv::Writer::from_writer(file),
        })
    }

    /// Writes the rows (a header alone when every row was created).
    pub fn write(mut self, rows: &[ResultRow]) -> Result<(), String> {
        let path = self.path.clone();
        let fail = |e: &dyn std::fmt::Display| fail(&path, e);
        self.out.write_record(HEADER).map_err(|e| fail(&e))?;
        for row in rows {
            self.out
                .write_record([
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
        self.out.flush().map_err(|e| fail(&e))
    }
}

fn fail(path: &Path, e: &dyn std::fmt::Display) -> String {
    format!("cannot write the report {}: {e}", path.display())
}
