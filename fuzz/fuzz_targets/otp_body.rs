//! The bodies of validate, resync and pairing on any JSON object: never panic; an accepted OTP is
//! 6 or 8 digits; no message repeats a submitted OTP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oath_service::domain::{FieldError, PairingRequest, ResyncRequest, ValidateRequest};
use serde_json::{Map, Value};

fn no_otp_echoed(body: &Map<String, Value>, errors: &[FieldError]) {
    let mut otps: Vec<&str> = body
        .get("otp")
        .and_then(Value::as_str)
        .into_iter()
        .collect();
    if let Some(Value::Array(items)) = body.get("otps") {
        otps.extend(items.iter().filter_map(Value::as_str));
    }
    // Codes made of digits: message text could match other strings by chance.
    let codes = otps
        .into_iter()
        .filter(|o| o.len() >= 6 && o.bytes().all(|b| b.is_ascii_digit()));
    for otp in codes {
        if body.keys().any(|k| k.contains(otp)) {
            continue; // an unknown property is named in its message
        }
        assert!(errors.iter().all(|e| !e.message.contains(otp)), "{otp}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match ValidateRequest::parse(&body) {
        Ok(r) => assert!(matches!(r.otp.length().get(), 6 | 8)),
        Err(errors) => no_otp_echoed(&body, &errors),
    }
    match ResyncRequest::parse(&body) {
        Ok(r) => assert!(r.otps.iter().all(|o| matches!(o.length().get(), 6 | 8))),
        Err(errors) => no_otp_echoed(&body, &errors),
    }
    match PairingRequest::parse(&body) {
        Ok(r) => assert!(!r.user_id.as_str().is_empty()),
        Err(errors) => no_otp_echoed(&body, &errors),
    }
});
