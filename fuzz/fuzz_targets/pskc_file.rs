//! `import::pskc::parse` on any bytes, without keys and with a pre-shared key and a password:
//! never panics; a file is refused with a message or read into numbered key packages, at most
//! the row limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oath_service::import::pskc::{parse, PskcKeys};

#[path = "import_common.rs"]
mod import_common;

/// The largest PBKDF2 iteration count the parser may derive with here: a file that asks for more
/// is refused before any derivation (as `import.pbkdf2_max_iterations` makes the service do), so
/// the run reads files rather than deriving keys.
const MAX_FUZZ_ROUNDS: u32 = 10_000;

fuzz_target!(|data: &[u8]| {
    import_common::check(parse(data, &PskcKeys::default(), import_common::MAX_ROWS));
    let keys = PskcKeys {
        // The key of RFC 6030's figure 6 (and the seeds), so that decryption is reached.
        pre_shared: Some(
            b"\x12\x34\x56\x78\x90\x12\x34\x56\x78\x90\x12\x34\x56\x78\x90\x12"
                .to_vec()
                .into(),
        ),
        password: Some(b"qwerty".to_vec().into()),
        pbkdf2_max_iterations: MAX_FUZZ_ROUNDS,
    };
    import_common::check(parse(data, &keys, import_common::MAX_ROWS));
});
