//! PSKC key containers (RFC 6030): one token per `KeyPackage`, numbered from 1 in file order.
//! The XML is read by [`super::xml`] (streamed, no DOCTYPE, bounded); encrypted values are opened
//! by [`encryption`]. A key package that breaks the token rules, or whose values do not
//! authenticate (a wrong key, an altered file), is an INVALID item, not a refused file.

mod encryption;

use base64::Engine as _;
use serde_json::Value;
use zeroize::Zeroizing;

pub use self::encryption::UNREADABLE;
use self::encryption::{Crypto, OpenError};
use super::xml::{shown, Element, Limits, Parts};
use super::{invalid, shown_serial, ImportError, RowFields};
use crate::domain::job::CreateItem;

/// Largest TimeDrift taken over, in time intervals (about 35 days of 30-second steps).
const MAX_DRIFT: i32 = 100_000;

/// The keys a request supplies for encrypted containers, and the cost it may ask for.
pub struct PskcKeys {
    /// The pre-shared key: the caller's own (`X-PSKC-Key`) or a configured one that
    /// `X-PSKC-Key-Id` named.
    pub pre_shared: Option<Zeroizing<Vec<u8>>>,
    /// The `X-PSKC-Password` header.
    pub password: Option<Zeroizing<Vec<u8>>>,
    /// Largest PBKDF2 iteration count derived (`import.pbkdf2_max_iterations`); a file asking
    /// for more is refused before any derivation.
    pub pbkdf2_max_iterations: u32,
}

impl Default for PskcKeys {
    fn default() -> Self {
        Self {
            pre_shared: None,
            password: None,
            pbkdf2_max_iterations: DEFAULT_PBKDF2_MAX_ITERATIONS,
        }
    }
}

/// `import.pbkdf2_max_iterations` unless configured.
pub const DEFAULT_PBKDF2_MAX_ITERATIONS: u32 = 200_000;

/// Reads a PSKC document into job items, refusing files of more than `max_rows` key packages.
pub fn parse(
    body: &[u8],
    keys: &PskcKeys,
    max_rows: usize,
) -> Result<Vec<CreateItem>, ImportError> {
    let mut parts = Parts::new(body, Limits::DEFAULT)?;
    let root = parts.root()?;
    check_root(&parts, &root)?;
    // The container's keys, held until the first key package.
    let mut encryption_key: Option<Element> = None;
    let mut mac_method: Option<Element> = None;
    let mut crypto: Option<Crypto> = None;
    let mut items = Vec::new();
    while let Some(part) = parts.next_part()? {
        match part.name.as_str() {
            "KeyPackage" => {
                if items.len() == max_rows {
                    return Err(ImportError::TooManyRows { max: max_rows });
                }
                let crypto = match &mut crypto {
                    Some(c) => c,
                    None => crypto.insert(Crypto::new(
                        &parts,
                        encryption_key.as_ref(),
                        mac_method.as_ref(),
                        keys,
                    )?),
                };
                let row_number = items.len() as i64 + 1;
                items.push(key_package(&parts, &part, crypto, row_number)?);
            }
            "EncryptionKey" | "MACMethod" if crypto.is_some() => {
                return Err(parts.error(
                    part.offset,
                    format!("{} must come before the first KeyPackage.", part.name),
                ))
            }
            "EncryptionKey" => keep_once(&parts, &mut encryption_key, part)?,
            "MACMethod" => keep_once(&parts, &mut mac_method, part)?,
            // Signature, other extensions: not needed to create tokens.
            _ => {}
        }
    }
    if items.is_empty() {
        return Err(ImportError::Unreadable(
            "The KeyContainer holds no KeyPackage.".into(),
        ));
    }
    Ok(items)
}

/// Keeps the container's `EncryptionKey` or `MACMethod`. RFC 6030 gives a container one of each;
/// a second is refused, since each is held whole until the first key package.
fn keep_once(doc: &Parts, slot: &mut Option<Element>, part: Element) -> Result<(), ImportError> {
    if slot.is_some() {
        return Err(doc.error(
            part.offset,
            format!(
                "the KeyContainer has a second {}; it may have one.",
                part.name
            ),
        ));
    }
    *slot = Some(part);
    Ok(())
}

fn check_root(doc: &Parts, root: &Element) -> Result<(), ImportError> {
    if root.name != "KeyContainer" {
        return Err(doc.error(
            root.offset,
            format!(
                "the root element is {}, not KeyContainer: this is not a PSKC document.",
                shown(&root.name)
            ),
        ));
    }
    match root.attribute("Version") {
        None | Some("1.0") => Ok(()),
        Some(v) => Err(doc.error(
            root.offset,
            format!(
                "KeyContainer Version {:?} is not supported (1.0 is).",
                shown(v)
            ),
        )),
    }
}

fn base64(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let compact: Zeroizing<String> =
        Zeroizing::new(text.chars().filter(|c| !c.is_ascii_whitespace()).collect());
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .ok()
        .map(Zeroizing::new)
}

/// The last segment of an algorithm URI, lower-case: `...xmlenc#aes128-cbc` -> `aes128-cbc`,
/// `urn:ietf:params:xml:ns:keyprov:pskc:hotp` -> `hotp`.
fn uri_suffix(uri: &str) -> String {
    uri.trim()
        .rsplit(['#', ':', '/'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// One key package -> one job item. Problems of the package are an INVALID item; an
/// encrypted value with no key at all refuses the file.
fn key_package(
    doc: &Parts,
    package: &Element,
    crypto: &Crypto,
    row_number: i64,
) -> Result<CreateItem, ImportError> {
    let key = package.child("Key");
    let serial = package
        .path(&["DeviceInfo", "SerialNo"])
        .map(|s| s.trimmed().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            key.and_then(|k| k.attribute("Id"))
                .map(|s| s.trim().to_string())
        });
    let echoed = serial.as_deref().and_then(shown_serial);
    let fail = |message: String| Ok(invalid(row_number, echoed.clone(), "", message));
    let Some(key) = key else {
        return fail("the KeyPackage has no Key".into());
    };
    if key.attribute("Algorithm").is_none() {
        return fail("the Key has no Algorithm".into());
    }
    let algorithm = key.attribute("Algorithm").unwrap_or_default();
    let token_type = match uri_suffix(algorithm).as_str() {
        "hotp" => "HOTP",
        "totp" => "TOTP",
        _ => {
            return fail(format!(
                "the Key Algorithm {:?} is not HOTP or TOTP",
                shown(algorithm)
            ))
        }
    };
    if crypto.key.is_none() && contains(package, "EncryptedValue") {
        return Err(doc.error(
            package.offset,
            "the KeyPackage holds encrypted values: send the file's pre-shared key in X-PSKC-Key (or name a configured one with X-PSKC-Key-Id), or its password in X-PSKC-Password.",
        ));
    }

    let mut fields = RowFields::default();
    let mut problems = Vec::new();
    // Any value that does not decrypt or authenticate makes the row's message UNREADABLE alone.
    let mut unreadable = false;
    match &serial {
        Some(s) => fields.set_str("serialNumber", s),
        None => problems.push("SerialNo is missing (DeviceInfo/SerialNo, or the Key Id)".into()),
    }
    fields.set_str("type", token_type);
    let parameters = key.child("AlgorithmParameters");
    match parameters.and_then(|p| p.child("ResponseFormat")) {
        None => problems.push("ResponseFormat is missing (it gives the OTP length)".into()),
        Some(format) => {
            if let Some(encoding) = format.attribute("Encoding") {
                if !encoding.eq_ignore_ascii_case("DECIMAL") {
                    problems.push(format!(
                        "ResponseFormat Encoding {:?} is not supported (DECIMAL is)",
                        shown(encoding)
                    ));
                }
            }
            match format.attribute("Length") {
                Some(length) => fields.set("otpLength", number(length)),
                None => problems.push("ResponseFormat Length is missing".into()),
            }
        }
    }
    if let Some(suite) = parameters.and_then(|p| p.child("Suite")) {
        fields.set_str("hashAlgorithm", &hash_algorithm(suite.trimmed()));
    }

    let data = key.child("Data");
    match data.and_then(|d| d.child("Secret")) {
        None => problems.push(if key.child("KeyReference").is_some() {
            "the Secret is missing: keys derived from a KeyReference cannot be imported".into()
        } else {
            "the Secret is missing".into()
        }),
        Some(secret) => match binary(crypto, "Secret", secret) {
            Ok(bytes) => fields.set_secret(&bytes),
            Err(OpenError::Malformed(e)) => problems.push(e),
            Err(OpenError::Unreadable) => unreadable = true,
        },
    }
    // Values that do not apply to the key's algorithm are read (and authenticated) but unused.
    let mut integer_field = |name: &str| -> Option<i64> {
        let element = data.and_then(|d| d.child(name))?;
        integer(crypto, name, element)
            .map_err(|e| match e {
                OpenError::Malformed(e) => problems.push(e),
                OpenError::Unreadable => unreadable = true,
            })
            .ok()
    };
    let counter = integer_field("Counter");
    let time_interval = integer_field("TimeInterval");
    let _time = integer_field("Time");
    let drift = integer_field("TimeDrift");
    match token_type {
        "HOTP" => {
            if let Some(counter) = counter {
                fields.set_nested("hotp", "counter", Value::from(counter));
            }
        }
        _ => {
            if let Some(step) = time_interval {
                fields.set_nested("totp", "timeStep", Value::from(step));
            }
        }
    }
    let drift = match drift.map(|d| i32::try_from(d).ok().filter(|d| d.abs() <= MAX_DRIFT)) {
        Some(Some(d)) if token_type == "TOTP" => d,
        Some(None) if token_type == "TOTP" => {
            problems.push(format!(
                "TimeDrift must be from -{MAX_DRIFT} to {MAX_DRIFT} time intervals"
            ));
            0
        }
        _ => 0,
    };
    if unreadable {
        return fail(UNREADABLE.to_string());
    }
    if !problems.is_empty() {
        return fail(problems.join("; "));
    }
    Ok(match fields.into_item(row_number, "", &element_name) {
        CreateItem::Token(mut token) => {
            token.drift = drift;
            CreateItem::Token(token)
        }
        invalid => invalid,
    })
}

/// The PSKC element a token field path came from.
fn element_name(path: &str) -> String {
    match path {
        "serialNumber" => "SerialNo",
        "secret" => "Secret",
        "type" => "Algorithm",
        "otpLength" => "ResponseFormat Length",
        "hashAlgorithm" => "Suite",
        "hotp" | "hotp.counter" => "Counter",
        "totp" | "totp.timeStep" => "TimeInterval",
        other => other,
    }
    .to_string()
}

fn contains(element: &Element, name: &str) -> bool {
    element.name == name || element.children.iter().any(|c| contains(c, name))
}

/// A `Suite` as the token rules name hashes: `HMAC-SHA256`, `SHA256` or an xmldsig URI ->
/// `HmacSHA256`; anything else is left for the rules to refuse.
fn hash_algorithm(suite: &str) -> String {
    let compact: String = uri_suffix(suite)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    match compact.trim_start_matches("hmac") {
        "sha1" => "HmacSHA1".into(),
        "sha256" => "HmacSHA256".into(),
        "sha512" => "HmacSHA512".into(),
        _ => shown(suite),
    }
}

fn number(text: &str) -> Value {
    let text = text.trim();
    text.parse::<i64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::String(shown(text)))
}

/// A binary value (`Secret`): base64 `PlainValue`, or `EncryptedValue` + `ValueMAC`.
fn binary(crypto: &Crypto, what: &str, element: &Element) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let malformed = |m: String| OpenError::Malformed(m);
    if let Some(plain) = element.child("PlainValue") {
        return base64(plain.trimmed())
            .ok_or_else(|| malformed(format!("{what} PlainValue is not base64")));
    }
    if let Some(encrypted) = element.child("EncryptedValue") {
        return crypto.open(what, encrypted, element.child("ValueMAC"));
    }
    Err(malformed(format!(
        "{what} has neither PlainValue nor EncryptedValue"
    )))
}

/// An integer value (`Counter`, `Time`, `TimeInterval`, `TimeDrift`): decimal `PlainValue`, or
/// an `EncryptedValue` holding decimal digits or a big-endian binary integer.
fn integer(crypto: &Crypto, what: &str, element: &Element) -> Result<i64, OpenError> {
    let signed = what == "TimeDrift";
    let not_integer = || OpenError::Malformed(format!("{what} is not an integer"));
    if let Some(plain) = element.child("PlainValue") {
        return plain.trimmed().parse::<i64>().map_err(|_| not_integer());
    }
    let Some(encrypted) = element.child("EncryptedValue") else {
        return Err(OpenError::Malformed(format!(
            "{what} has neither PlainValue nor EncryptedValue"
        )));
    };
    let bytes = crypto.open(what, encrypted, element.child("ValueMAC"))?;
    if let Some(n) = std::str::from_utf8(&bytes)
        .ok()
        .filter(|s| !s.is_empty())
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        return Ok(n);
    }
    if bytes.is_empty() || bytes.len() > 8 {
        return Err(not_integer());
    }
    // Big-endian; only TimeDrift may be negative.
    let fill = if signed && bytes[0] & 0x80 != 0 {
        0xFF
    } else {
        0
    };
    let mut be = [fill; 8];
    be[8 - bytes.len()..].copy_from_slice(&bytes);
    if !signed && bytes.len() == 8 && bytes[0] & 0x80 != 0 {
        return Err(not_integer());
    }
    Ok(i64::from_be_bytes(be))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TokenKind;

    const RFC_SECRET: &[u8] = b"12345678901234567890";

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("tests/fixtures/pskc/{name}")).unwrap()
    }

    fn pre_shared(hex_key: &str) -> PskcKeys {
        PskcKeys {
            pre_shared: Some(Zeroizing::new(hex::decode(hex_key).unwrap())),
            ..PskcKeys::default()
        }
    }

    fn password(p: &str) -> PskcKeys {
        PskcKeys {
            password: Some(Zeroizing::new(p.as_bytes().to_vec())),
            ..PskcKeys::default()
        }
    }

    fn parse_ok(name: &str, keys: &PskcKeys) -> Vec<CreateItem> {
        parse(&fixture(name), keys, 1000).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn token(item: &CreateItem) -> &crate::domain::NewToken {
        item.token()
    }

    fn message(item: &CreateItem) -> &str {
        &item.invalid().message
    }

    fn refused(body: &[u8], keys: &PskcKeys) -> String {
        parse(body, keys, 1000).unwrap_err().to_string()
    }

    #[test]
    fn rfc6030_figure3_plain_hotp() {
        let items = parse_ok("rfc6030-figure3.pskcxml", &PskcKeys::default());
        let t = token(&items[0]);
        assert_eq!(t.serial_number.as_str(), "987654321");
        assert_eq!(t.secret.expose(), RFC_SECRET);
        assert_eq!(t.otp_length.get(), 8);
        assert_eq!(t.kind, TokenKind::Hotp { counter: 0 });
        assert_eq!(t.row_number, Some(1));
    }

    #[test]
    fn rfc6030_figures_that_hold_no_importable_token_are_invalid_rows() {
        // Figure 2: a 32-bit secret, no serial number but a Key Id, and no OTP length.
        let items = parse_ok("rfc6030-figure2.pskcxml", &PskcKeys::default());
        assert_eq!(items.len(), 1);
        assert_eq!(
            message(&items[0]),
            "ResponseFormat is missing (it gives the OTP length)"
        );
        // Figure 4: the key is derived from a master key the service does not have.
        let items = parse_ok("rfc6030-figure4.pskcxml", &PskcKeys::default());
        assert!(message(&items[0]).contains("KeyReference"), "{items:?}");
        // Figure 5: the HOTP key, then its PIN as a key package of its own.
        let items = parse_ok("rfc6030-figure5.pskcxml", &PskcKeys::default());
        assert_eq!(token(&items[0]).secret.expose(), RFC_SECRET);
        assert!(message(&items[1]).contains("is not HOTP or TOTP"));
    }

    #[test]
    fn rfc6030_figure6_pre_shared_key_and_figure7_password() {
        let items = parse_ok(
            "rfc6030-figure6.pskcxml",
            &pre_shared("12345678901234567890123456789012"),
        );
        assert_eq!(token(&items[0]).secret.expose(), RFC_SECRET);
        let items = parse_ok("rfc6030-figure7.pskcxml", &password("qwerty"));
        let t = token(&items[0]);
        assert_eq!(t.secret.expose(), RFC_SECRET);
        assert_eq!(t.serial_number.as_str(), "987654321");
    }

    #[test]
    fn a_wrong_key_or_password_makes_rows_invalid_not_the_file() {
        for (name, keys) in [
            (
                "rfc6030-figure6.pskcxml",
                pre_shared("00000000000000000000000000000000"),
            ),
            ("rfc6030-figure7.pskcxml", password("Qwerty")),
            ("vendor-aes256.pskcxml", pre_shared(&"ab".repeat(32))),
        ] {
            for item in parse_ok(name, &keys) {
                assert_eq!(message(&item), UNREADABLE, "{name}");
            }
        }
        // A key of the wrong size for the file's algorithm is a wrong key.
        let items = parse_ok("rfc6030-figure6.pskcxml", &pre_shared(&"12".repeat(32)));
        assert_eq!(message(&items[0]), UNREADABLE);
    }

    #[test]
    fn vendor_files_plain_and_encrypted() {
        let key: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
        for (name, keys, prefix) in [
            ("vendor-aes256.pskcxml", pre_shared(&key), "EVA"),
            (
                "vendor-pbkdf2.pskcxml",
                password("correct horse battery staple"),
                "EVP",
            ),
        ] {
            let items = parse_ok(name, &keys);
            let t: Vec<_> = items.iter().map(token).collect();
            assert_eq!(t[0].serial_number.as_str(), format!("{prefix}0001"));
            assert_eq!(t[0].secret.expose(), RFC_SECRET);
            assert_eq!(t[0].kind, TokenKind::Hotp { counter: 5 });
            assert_eq!(t[1].secret.expose(), b"12345678901234567890123456789012");
            assert_eq!(t[1].kind, TokenKind::Totp { time_step: 30 });
            assert_eq!(t[1].hash_algorithm.as_str(), "HmacSHA256");
            assert_eq!(t[1].otp_length.get(), 8);
            assert_eq!(t[2].secret.expose().len(), 64);
            assert_eq!(t[2].kind, TokenKind::Totp { time_step: 60 });
            assert_eq!(t[2].hash_algorithm.as_str(), "HmacSHA512");
            assert_eq!((t[1].drift, t[2].drift), (0, -1));
        }

        let items = parse_ok("vendor-plain.pskcxml", &PskcKeys::default());
        assert_eq!(items.len(), 5);
        assert_eq!(token(&items[0]).kind, TokenKind::Hotp { counter: 42 });
        assert_eq!(token(&items[1]).hash_algorithm.as_str(), "HmacSHA256");
        assert_eq!(token(&items[2]).secret.expose().len(), 64);
        assert!(message(&items[3]).starts_with("SerialNo is missing"));
        assert_eq!(message(&items[4]), "ResponseFormat Length must be 6 or 8");
    }

    #[test]
    fn a_bad_mac_rejects_its_key_package_only() {
        let key: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
        let items = parse_ok("vendor-aes256-bad-mac.pskcxml", &pre_shared(&key));
        assert_eq!(token(&items[0]).serial_number.as_str(), "EVM0001");
        assert_eq!(message(&items[1]), UNREADABLE);
        let r = items[1].invalid();
        assert_eq!(r.row_number, 2);
        assert_eq!(r.serial_number.as_deref(), Some("EVM0002"));
        assert_eq!(token(&items[2]).serial_number.as_str(), "EVM0003");
    }

    #[test]
    fn encrypted_files_need_a_key() {
        let err = refused(&fixture("rfc6030-figure6.pskcxml"), &PskcKeys::default());
        assert!(
            err.starts_with("Line 9:") && err.contains("X-PSKC-Key-Id"),
            "{err}"
        );
        let err = refused(&fixture("rfc6030-figure7.pskcxml"), &PskcKeys::default());
        assert!(err.contains("X-PSKC-Password"), "{err}");
    }

    #[test]
    fn dtds_entities_and_broken_xml_are_refused_with_their_line() {
        let cases: [(&[u8], &str); 9] = [
            (
                &fixture("billion-laughs.pskcxml"),
                "Line 2: a DOCTYPE declaration is not accepted",
            ),
            (
                &fixture("external-entity.pskcxml"),
                "Line 2: a DOCTYPE declaration is not accepted",
            ),
            (
                &fixture("undeclared-entity.pskcxml"),
                "Line 4: the entity reference &serial; is not defined",
            ),
            (
                &fixture("truncated.pskcxml"),
                "the file ends before the element Data (line 8) is closed",
            ),
            (
                b"serialNumber,secret\nA1,00",
                "Line 1: text outside the root element",
            ),
            (
                b"<?xml version=\"1.0\"?>\n<html><body/></html>",
                "Line 2: the root element is html",
            ),
            (
                b"<KeyContainer Version=\"2.0\"/>",
                "Version \"2.0\" is not supported",
            ),
            (
                b"<KeyContainer>\n<KeyPackage></Key></KeyContainer>",
                "Line 2: the file is not well-formed XML",
            ),
            (
                b"<KeyContainer Version=\"1.0\"></KeyContainer>",
                "holds no KeyPackage",
            ),
        ];
        for (body, want) in cases {
            let err = refused(body, &PskcKeys::default());
            assert!(err.contains(want), "{want}: {err}");
        }
        let deep = format!("<KeyContainer>{}", "<a>".repeat(100));
        assert!(refused(deep.as_bytes(), &PskcKeys::default()).contains("nest deeper than 32"));
        assert!(refused(b"\xff\xfe<\x00", &PskcKeys::default()).contains("UTF-16"));
        assert!(
            refused(b"<KeyContainer>\n\xff</KeyContainer>", &PskcKeys::default())
                .starts_with("Line 2: the file is not UTF-8")
        );
    }

    /// Each is held whole until the first key package: were repeats allowed, a file of them would
    /// be held whole, at many times its size.
    #[test]
    fn a_second_encryption_key_or_mac_method_is_refused() {
        for element in ["EncryptionKey", "MACMethod"] {
            let body = format!(
                "<KeyContainer>\n<{element}/>\n<{element}><a/></{element}>\n<KeyPackage/></KeyContainer>"
            );
            assert_eq!(
                refused(body.as_bytes(), &PskcKeys::default()),
                format!("Line 3: the KeyContainer has a second {element}; it may have one.")
            );
        }
    }

    #[test]
    fn key_package_count_is_bounded() {
        let body = fixture("rfc6030-figure5.pskcxml");
        assert_eq!(
            parse(&body, &PskcKeys::default(), 1).unwrap_err(),
            ImportError::TooManyRows { max: 1 }
        );
    }

    #[test]
    fn suites_and_algorithm_uris_are_read_by_their_last_segment() {
        assert_eq!(hash_algorithm("HMAC-SHA256"), "HmacSHA256");
        assert_eq!(
            hash_algorithm("http://www.w3.org/2001/04/xmldsig-more#hmac-sha512"),
            "HmacSHA512"
        );
        assert_eq!(hash_algorithm("SHA1"), "HmacSHA1");
        assert_eq!(hash_algorithm("MD5"), "MD5");
        assert_eq!(uri_suffix("http://www.ietf.org/keyprov/pskc#totp"), "totp");
        assert_eq!(
            uri_suffix("urn:ietf:params:xml:ns:keyprov:pskc:HOTP"),
            "hotp"
        );
    }

    // --- Encrypted containers built here, under a key the test knows. ---

    const KEY: [u8; 16] = [0x42; 16];
    const MAC_KEY: [u8; 20] = [0x17; 20];

    fn encrypt(key: &[u8], iv: [u8; 16], plain: &[u8]) -> Vec<u8> {
        use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, KeyIvInit};
        assert_eq!(plain.len() % 16, 0, "the caller pads");
        let mut body = plain.to_vec();
        cbc::Encryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .unwrap()
            .encrypt_padded_mut::<NoPadding>(&mut body, plain.len())
            .unwrap();
        let mut out = iv.to_vec();
        out.extend(body);
        out
    }

    fn pkcs7(value: &[u8]) -> Vec<u8> {
        let n = 16 - value.len() % 16;
        let mut out = value.to_vec();
        out.extend(std::iter::repeat_n(n as u8, n));
        out
    }

    fn hmac_sha1(key: &[u8], data: &[u8]) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn encrypted(element: &str, cipher: &[u8], value_mac: &[u8]) -> String {
        format!(
            r#"<{element}><EncryptedValue><xenc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/><xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData></EncryptedValue><ValueMAC>{}</ValueMAC></{element}>"#,
            b64(cipher),
            b64(value_mac)
        )
    }

    /// A container whose MACKey is `mac_key_cipher` (IV and blocks), with one HOTP key package
    /// per `(serial, secret cipher, ValueMAC, counter element)`.
    fn container(
        mac_key_cipher: &[u8],
        packages: &[(String, Vec<u8>, Vec<u8>, String)],
    ) -> Vec<u8> {
        let mut xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0" xmlns="urn:ietf:params:xml:ns:keyprov:pskc" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" xmlns:xenc="http://www.w3.org/2001/04/xmlenc#">
<EncryptionKey><ds:KeyName>Pre-shared-key</ds:KeyName></EncryptionKey>
<MACMethod Algorithm="http://www.w3.org/2000/09/xmldsig#hmac-sha1"><MACKey><xenc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/><xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData></MACKey></MACMethod>
"#,
            b64(mac_key_cipher)
        );
        for (serial, cipher, value_mac, counter) in packages {
            xml.push_str(&format!(
                r#"<KeyPackage><DeviceInfo><SerialNo>{serial}</SerialNo></DeviceInfo><Key Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp"><AlgorithmParameters><ResponseFormat Length="6" Encoding="DECIMAL"/></AlgorithmParameters><Data>{}{counter}</Data></Key></KeyPackage>
"#,
                encrypted("Secret", cipher, value_mac)
            ));
        }
        xml.push_str("</KeyContainer>");
        xml.into_bytes()
    }

    fn key_of_test() -> PskcKeys {
        PskcKeys {
            pre_shared: Some(Zeroizing::new(KEY.to_vec())),
            ..PskcKeys::default()
        }
    }

    #[test]
    fn a_container_built_here_imports_its_encrypted_secret_and_counter() {
        let mac_key_cipher = encrypt(&KEY, [1; 16], &pkcs7(&MAC_KEY));
        let secret_cipher = encrypt(&KEY, [2; 16], &pkcs7(RFC_SECRET));
        // The counter as decimal text, and as a big-endian integer.
        let text = encrypt(&KEY, [3; 16], &pkcs7(b"42"));
        let binary = encrypt(&KEY, [4; 16], &pkcs7(&[0x01, 0x00]));
        let packages: Vec<_> = [("T1", text), ("T2", binary)]
            .into_iter()
            .map(|(serial, counter)| {
                (
                    serial.to_string(),
                    secret_cipher.clone(),
                    hmac_sha1(&MAC_KEY, &secret_cipher),
                    encrypted("Counter", &counter, &hmac_sha1(&MAC_KEY, &counter)),
                )
            })
            .collect();
        let items = parse(&container(&mac_key_cipher, &packages), &key_of_test(), 10).unwrap();
        assert_eq!(token(&items[0]).secret.expose(), RFC_SECRET);
        assert_eq!(token(&items[0]).kind, TokenKind::Hotp { counter: 42 });
        assert_eq!(token(&items[1]).kind, TokenKind::Hotp { counter: 256 });
    }

    /// The attack on a service that told "the MAC key does not decrypt" from "ValueMAC does not
    /// match": a victim's ciphertext block as the MACKey, behind 256 chosen IVs, so that the one
    /// IV giving valid padding reveals a plaintext byte. Every package must read the same.
    #[test]
    fn crafted_mac_keys_are_no_padding_oracle() {
        // The victim's value, encrypted under the shared key; the attacker has its ciphertext.
        let victim = encrypt(&KEY, [9; 16], &pkcs7(b"victim secret!!"));
        let (victim_iv, victim_block) = victim.split_at(16);
        let secret_cipher = encrypt(&KEY, [2; 16], &pkcs7(RFC_SECRET));
        let mut messages = std::collections::BTreeSet::new();
        let mut valid_padding = 0;
        for guess in 0..=255u8 {
            let mut iv: [u8; 16] = victim_iv.try_into().unwrap();
            iv[15] ^= guess;
            let mut mac_key_cipher = iv.to_vec();
            mac_key_cipher.extend_from_slice(&victim_block[..16]);
            // Whether this guess decrypts to a well-padded (if short) key, as the attacker hopes.
            let last = b"victim secret!!\x01"[15] ^ guess;
            if (1..=16).contains(&last) {
                valid_padding += 1;
            }
            let packages = [(
                format!("G{guess}"),
                secret_cipher.clone(),
                vec![0u8; 20],
                String::new(),
            )];
            for item in parse(&container(&mac_key_cipher, &packages), &key_of_test(), 10).unwrap() {
                messages.insert(message(&item).to_string());
            }
        }
        assert!(valid_padding > 0, "some guesses do reach a padded key");
        assert_eq!(messages.into_iter().collect::<Vec<_>>(), [UNREADABLE]);
    }

    /// A MAC key that decrypts to nothing (a block of padding) is a key the attacker knows: with
    /// it they could MAC any ciphertext and import a clone of someone else's token.
    #[test]
    fn short_or_empty_mac_keys_import_nothing() {
        let secret_cipher = encrypt(&KEY, [2; 16], &pkcs7(RFC_SECRET));
        for mac_key in [&b""[..], b"k", &[7u8; 15]] {
            let mac_key_cipher = encrypt(&KEY, [1; 16], &pkcs7(mac_key));
            let packages = [(
                "CLONE1".to_string(),
                secret_cipher.clone(),
                hmac_sha1(mac_key, &secret_cipher),
                String::new(),
            )];
            let items = parse(&container(&mac_key_cipher, &packages), &key_of_test(), 10).unwrap();
            assert_eq!(message(&items[0]), UNREADABLE, "{} bytes", mac_key.len());
        }
    }

    #[test]
    fn padding_is_checked_on_every_byte() {
        use super::encryption::unpadded_len as unpadded;
        assert_eq!(unpadded(&[b'a', b'b', 2, 2]), Some(2));
        assert_eq!(
            unpadded(&[b'a', b'b', 5, 2]),
            None,
            "a pad byte that differs"
        );
        assert_eq!(unpadded(&[b'a', 3, 2, 3]), None);
        assert_eq!(unpadded(&[b'a', b'b', b'c', 0]), None);
        assert_eq!(unpadded(&[17; 32]), None);
        assert_eq!(unpadded(&[16; 16]), Some(0));
        // A value padded wrongly in its middle pad byte is unreadable, like any other failure.
        let mac_key_cipher = encrypt(&KEY, [1; 16], &pkcs7(&MAC_KEY));
        let mut bad = MAC_KEY[..16].to_vec();
        bad.extend([b'x'; 13]);
        bad.extend([3, 9, 3]);
        let secret_cipher = encrypt(&KEY, [2; 16], &bad);
        let packages = [(
            "P1".to_string(),
            secret_cipher.clone(),
            hmac_sha1(&MAC_KEY, &secret_cipher),
            String::new(),
        )];
        let items = parse(&container(&mac_key_cipher, &packages), &key_of_test(), 10).unwrap();
        assert_eq!(message(&items[0]), UNREADABLE);
    }

    #[test]
    fn encrypted_integers_decode_as_text_or_big_endian_and_drift_may_be_negative() {
        let mac_key_cipher = encrypt(&KEY, [1; 16], &pkcs7(&MAC_KEY));
        let secret_cipher = encrypt(&KEY, [2; 16], &pkcs7(RFC_SECRET));
        let body = String::from_utf8(container(&mac_key_cipher, &[])).unwrap();
        let enc = |element: &str, plain: &[u8]| {
            let c = encrypt(&KEY, [5; 16], &pkcs7(plain));
            encrypted(element, &c, &hmac_sha1(&MAC_KEY, &c))
        };
        let totp = |serial: &str, drift: String| {
            format!(
                r#"<KeyPackage><DeviceInfo><SerialNo>{serial}</SerialNo></DeviceInfo><Key Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:totp"><AlgorithmParameters><ResponseFormat Length="6" Encoding="DECIMAL"/></AlgorithmParameters><Data>{}{}{drift}</Data></Key></KeyPackage>"#,
                encrypted(
                    "Secret",
                    &secret_cipher,
                    &hmac_sha1(&MAC_KEY, &secret_cipher)
                ),
                enc("TimeInterval", b"60"),
            )
        };
        let packages = [
            totp("D1", enc("TimeDrift", b"-3")),
            totp("D2", enc("TimeDrift", &[0xFF, 0xFE])),
            totp(
                "D3",
                "<TimeDrift><PlainValue>-4</PlainValue></TimeDrift>".into(),
            ),
            totp("D4", enc("TimeDrift", b"not a number")),
        ]
        .concat();
        let xml = body.replace("</KeyContainer>", &format!("{packages}</KeyContainer>"));
        let items = parse(xml.as_bytes(), &key_of_test(), 10).unwrap();
        let drifts: Vec<i32> = items[..3].iter().map(|i| token(i).drift).collect();
        assert_eq!(drifts, [-3, -2, -4]);
        assert_eq!(token(&items[0]).kind, TokenKind::Totp { time_step: 60 });
        assert_eq!(message(&items[3]), "TimeDrift is not an integer");
    }

    /// The timing side of the padding oracle: with a MACKey whose padding fails, a package must
    /// cost what it costs with one that decrypts (to a key the attacker does not know, so every
    /// ValueMAC fails), or the time of the answer tells the two apart, one bit per upload.
    /// Containers of each kind are parsed in interleaved rounds, timed by the CPU time they take;
    /// the median ratio of their times must be close to 1 (it was about 0.4 when a failed MAC
    /// key skipped every value's HMAC).
    #[test]
    fn a_mac_key_that_does_not_decrypt_costs_the_same_time() {
        const PACKAGES: usize = 6;
        const ROUNDS: usize = 15;
        // Values large enough that authenticating them is most of the work (as base64, just
        // under the 64 KiB of text an element may hold).
        let value = encrypt(&KEY, [3; 16], &pkcs7(&[0x5A; 46 * 1024]));
        let others: String = ["Counter", "Time", "TimeInterval", "TimeDrift"]
            .iter()
            .map(|element| encrypted(element, &value, &[0; 20]))
            .collect();
        let packages: Vec<_> = (0..PACKAGES)
            .map(|i| {
                (
                    format!("T{i}"),
                    value.clone(),
                    vec![0u8; 20],
                    others.clone(),
                )
            })
            .collect();
        // HMAC-SHA512, the slowest MAC here: the file names it, so an attacker would pick it.
        let sha512 = |body: Vec<u8>| {
            String::from_utf8(body)
                .unwrap()
                .replace("xmldsig#hmac-sha1", "xmldsig-more#hmac-sha512")
                .into_bytes()
        };
        let decrypts = sha512(container(
            &encrypt(&KEY, [1; 16], &pkcs7(&MAC_KEY)),
            &packages,
        ));
        let mut badly_padded = MAC_KEY.to_vec();
        badly_padded.extend([0; 12]);
        let fails = sha512(container(&encrypt(&KEY, [1; 16], &badly_padded), &packages));
        assert_eq!(decrypts.len(), fails.len());

        // The time this thread ran, as the scheduler counts it (ns): unlike the wall clock, it
        // leaves out what other work on a busy machine takes.
        let cpu_time = || {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            stat.split_whitespace()
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
                / 1e9
        };
        let time = |body: &[u8]| {
            let started = cpu_time();
            let items = parse(body, &key_of_test(), 100).unwrap();
            let elapsed = cpu_time() - started;
            assert!(items.iter().all(|i| message(i) == UNREADABLE));
            elapsed
        };
        let (mut ratios, mut decrypting, mut failing) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Alternate which goes first, so that neither always meets a warm cache.
            let (d, f) = if round % 2 == 0 {
                let d = time(&decrypts);
                (d, time(&fails))
            } else {
                let f = time(&fails);
                (time(&decrypts), f)
            };
            ratios.push(f / d);
            decrypting.push(d);
            failing.push(f);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ratio = median(&mut ratios);
        eprintln!(
            "MACKey decrypts: median {:.1} ms; MACKey padding fails: median {:.1} ms; median ratio {ratio:.3}",
            median(&mut decrypting) * 1000.0,
            median(&mut failing) * 1000.0,
        );
        assert!(
            (0.9..=1.1).contains(&ratio),
            "a failed MACKey changes the time of a parse by a factor {ratio:.3}"
        );
    }

    #[test]
    fn pbkdf2_iteration_counts_above_the_limit_are_refused_before_deriving() {
        let body = fixture("vendor-pbkdf2.pskcxml");
        let mut keys = password("correct horse battery staple");
        keys.pbkdf2_max_iterations = 999;
        let err = refused(&body, &keys);
        assert!(err.contains("IterationCount from 1 to 999"), "{err}");
    }
}
