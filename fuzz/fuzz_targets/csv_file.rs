//! `import::csv::parse` on any bytes: never panics; a file is refused with a message or read
//! into numbered rows, at most the row limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "import_common.rs"]
mod import_common;

fuzz_target!(|data: &[u8]| {
    import_common::check(oath_service::import::csv::parse(data, import_common::MAX_ROWS));
});
