//! `NewToken::parse` on any JSON: never panics; every problem names a field inside the token;
//! no message repeats the submitted secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oath_service::domain::{NewToken, TokenSource};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for source in [TokenSource::Single, TokenSource::JobItem(7)] {
        match NewToken::parse(&value, source) {
            Ok(token) => {
                assert!((1..=50).contains(&token.serial_number.as_str().len()));
                assert!(matches!(token.otp_length.get(), 6 | 8));
            }
            Err(errors) => {
                assert!(!errors.is_empty());
                if let TokenSource::JobItem(_) = source {
                    assert!(errors.iter().all(|e| e.target.starts_with("tokens[7]")));
                }
                let secret = value.get("secret").and_then(Value::as_str).unwrap_or("");
                // Targets name unknown properties as sent, at any depth: a key that embeds
                // the secret is the client's own text coming back, not the secret's value.
                let echoed_as_key = any_key_contains(&value, secret);
                // Hex secrets: message text could match other strings by chance.
                let hex = secret.bytes().all(|b| b.is_ascii_hexdigit());
                if secret.len() >= 16 && hex && !echoed_as_key {
                    assert!(errors.iter().all(|e| !e.message.contains(secret)));
                }
            }
        }
    }
});

fn any_key_contains(value: &Value, needle: &str) -> bool {
    match value {
        Value::Object(o) => o
            .iter()
            .any(|(k, v)| k.contains(needle) || any_key_contains(v, needle)),
        Value::Array(a) => a.iter().any(|v| any_key_contains(v, needle)),
        _ => false,
    }
}
