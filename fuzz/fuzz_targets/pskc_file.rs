//! `import::pskc::parse` on any bytes, without keys and with a pre-shared key and a password:
//! never panics; a file is refused with a message or read into numbered key packages, at most
//! the row limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oath_service::import::pskc::{parse, PskcKeys};

#[path = "import_common.rs"]
mod import_common;

/// PBKDF2 rounds above which an input is read without the password: the parser accepts up to a
/// million, which would spend the run's time deriving keys rather than reading files.
const MAX_FUZZ_ROUNDS: u64 = 10_000;

/// Whether every `IterationCount` element in `data` holds a plain number of at most
/// `MAX_FUZZ_ROUNDS` (anything else, such as a character reference or CDATA, counts as dear).
fn cheap_derivations(data: &[u8]) -> bool {
    let name = b"IterationCount";
    let mut from = 0;
    while let Some(at) = data[from..].windows(name.len()).position(|w| w == name) {
        let at = from + at;
        from = at + name.len();
        let Some(open) = data[..at].iter().rposition(|b| *b == b'<') else {
            continue;
        };
        if data.get(open + 1) == Some(&b'/') {
            continue; // a closing tag
        }
        let Some(gt) = data[from..].iter().position(|b| *b == b'>') else {
            continue;
        };
        let value: Vec<u8> = data[from + gt + 1..]
            .iter()
            .take_while(|b| **b != b'<')
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let cheap = (1..=6).contains(&value.len())
            && value.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n <= MAX_FUZZ_ROUNDS);
        if !cheap {
            return false;
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    import_common::check(parse(data, &PskcKeys::default(), import_common::MAX_ROWS));
    let keys = PskcKeys {
        // The key of RFC 6030's figure 6 (and the seeds), so that decryption is reached.
        pre_shared: Some(
            b"\x12\x34\x56\x78\x90\x12\x34\x56\x78\x90\x12\x34\x56\x78\x90\x12"
                .to_vec()
                .into(),
        ),
        password: cheap_derivations(data).then(|| b"qwerty".to_vec().into()),
    };
    import_common::check(parse(data, &keys, import_common::MAX_ROWS));
});
