// Shared by the import targets (included with `#[path]`): what every parsed file must satisfy.

use oath_service::domain::job::CreateItem;
use oath_service::import::ImportError;

/// Rows read from one file in the fuzz targets.
pub const MAX_ROWS: usize = 20;

/// A file is refused with a message, or read into at most `MAX_ROWS` items numbered 1, 2, ...
/// in order; an INVALID row says why.
pub fn check(result: Result<Vec<CreateItem>, ImportError>) {
    match result {
        Ok(items) => {
            assert!(items.len() <= MAX_ROWS);
            for (i, item) in items.iter().enumerate() {
                let want = i as i64 + 1;
                match item {
                    CreateItem::Token(token) => {
                        assert_eq!(token.row_number, Some(want));
                        assert!(matches!(token.otp_length.get(), 6 | 8));
                    }
                    CreateItem::Invalid(row) => {
                        assert_eq!(row.row_number, want);
                        assert!(!row.message.is_empty());
                    }
                }
            }
        }
        Err(ImportError::TooManyRows { max }) => assert_eq!(max, MAX_ROWS),
        Err(ImportError::Unreadable(message)) => assert!(!message.is_empty()),
    }
}
