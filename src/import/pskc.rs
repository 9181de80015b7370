//! PSKC key containers (RFC 6030): one token per `KeyPackage`, numbered from 1 in file order.
//!
//! The XML is read as a stream; only the container's header (`EncryptionKey`, `MACMethod`) and
//! one `KeyPackage` at a time are held as small trees, so a 100,000-key file costs little more
//! than its bytes. A DOCTYPE is refused outright, which makes entity expansion ("billion
//! laughs") and external entities impossible; nesting, attributes and text are capped.
//!
//! Encrypted values (RFC 6030 section 6.1) are AES-CBC with the IV in front of the ciphertext,
//! under a pre-shared key (`X-PSKC-Key-Id`) or a PBKDF2 key derived from a password
//! (`X-PSKC-Password`). Each must carry a `ValueMAC`: an HMAC of IV and ciphertext under the
//! container's MAC key (`MACMethod/MACKey`, itself encrypted with the same key; the encryption
//! key when absent), checked in constant time before anything is decrypted. A value whose MAC
//! does not match (a wrong key, an altered file) makes its key package INVALID, not the file.

use aes::cipher::{BlockDecryptMut, KeyIvInit};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use serde_json::Value;
use zeroize::Zeroizing;

use super::{invalid, line_of, shown_serial, ImportError, RowFields};
use crate::domain::job::CreateItem;

/// Deepest element nesting accepted (RFC 6030 documents need about ten levels).
const MAX_DEPTH: usize = 32;
/// Attributes on one element.
const MAX_ATTRIBUTES: usize = 32;
/// Elements in the container header or in one key package.
const MAX_ELEMENTS: usize = 1_000;
/// Characters of text in one element (base64 values of a few hundred bytes are typical).
const MAX_TEXT: usize = 64 * 1024;
/// Largest TimeDrift taken over, in time intervals (about 35 days of 30-second steps).
const MAX_DRIFT: i32 = 100_000;
/// PBKDF2 iterations accepted: enough for any real file, too few to tie a worker up for long.
const MAX_ITERATIONS: u32 = 1_000_000;

/// The keys a request supplies for encrypted containers.
#[derive(Default)]
pub struct PskcKeys {
    /// The configured pre-shared key that `X-PSKC-Key-Id` named.
    pub pre_shared: Option<Zeroizing<Vec<u8>>>,
    /// The `X-PSKC-Password` header.
    pub password: Option<Zeroizing<Vec<u8>>>,
}

/// A parsed element: local names only (PSKC, XML Encryption and XML Signature names do not
/// collide, and vendors are loose with namespaces).
#[derive(Debug, Default)]
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    text: String,
    children: Vec<Element>,
    /// Byte offset of the start tag, for messages.
    offset: usize,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |e, n| e.child(n))
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn trimmed(&self) -> &str {
        self.text.trim()
    }
}

/// Reads a PSKC document into job items, refusing files of more than `max_rows` key packages.
pub fn parse(
    body: &[u8],
    keys: &PskcKeys,
    max_rows: usize,
) -> Result<Vec<CreateItem>, ImportError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.starts_with(&[0xFE, 0xFF]) || body.starts_with(&[0xFF, 0xFE]) {
        return Err(ImportError::Unreadable(
            "The file is UTF-16; send PSKC files as UTF-8.".into(),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        ImportError::at_line(
            line_of(body, e.valid_up_to()),
            "the file is not UTF-8 text.",
        )
    })?;
    let mut doc = Document {
        bytes: body,
        reader: Reader::from_str(text),
        stack: Vec::new(),
        elements: 0,
        pending_close: false,
        event_start: 0,
    };
    doc.reader.config_mut().check_end_names = true;

    let mut header: Vec<Element> = Vec::new();
    let mut crypto: Option<Crypto> = None;
    let mut items = Vec::new();
    let mut root_seen = false;
    loop {
        match doc.next()? {
            Node::Open(start) => {
                if !root_seen {
                    root_seen = true;
                    check_root(&doc, &start)?;
                }
                doc.stack.push(start);
            }
            Node::Close => {
                let element = doc.stack.pop().expect("a close follows an open");
                match doc.stack.len() {
                    // The root: the document is complete.
                    0 => break,
                    // A child of the root: header parts, then key packages.
                    1 => {
                        doc.elements = 0;
                        match element.name.as_str() {
                            "KeyPackage" => {
                                if items.len() == max_rows {
                                    return Err(ImportError::TooManyRows { max: max_rows });
                                }
                                let crypto = match &mut crypto {
                                    Some(c) => c,
                                    None => crypto.insert(Crypto::new(&doc, &header, keys)?),
                                };
                                let row_number = items.len() as i64 + 1;
                                items.push(key_package(&doc, &element, crypto, row_number)?);
                            }
                            "EncryptionKey" | "MACMethod" if crypto.is_none() => {
                                header.push(element)
                            }
                            "EncryptionKey" | "MACMethod" => {
                                return Err(doc.error(
                                    element.offset,
                                    format!(
                                        "{} must come before the first KeyPackage.",
                                        element.name
                                    ),
                                ))
                            }
                            // Signature, other extensions: not needed to create tokens.
                            _ => {}
                        }
                    }
                    _ => doc
                        .stack
                        .last_mut()
                        .expect("a parent")
                        .children
                        .push(element),
                }
            }
            Node::Text(text) => {
                // Text directly in the root is the whitespace between key packages.
                if doc.stack.len() == 1 {
                    continue;
                }
                if let Some(open) = doc.stack.last_mut() {
                    if open.text.len() + text.len() > MAX_TEXT {
                        let offset = open.offset;
                        return Err(doc.error(offset, "an element holds too much text."));
                    }
                    open.text.push_str(&text);
                } else if !text.trim().is_empty() {
                    let at = doc.event_start;
                    return Err(doc.error(
                        at,
                        "text outside the root element: this is not a PSKC (XML) document.",
                    ));
                }
            }
            Node::End => {
                return Err(match doc.stack.last() {
                    Some(open) => doc.error(
                        doc.bytes.len(),
                        format!(
                            "the file ends before the element {} (line {}) is closed.",
                            open.name,
                            line_of(doc.bytes, open.offset)
                        ),
                    ),
                    None => ImportError::Unreadable(
                        "The file is not a PSKC document: it has no KeyContainer element.".into(),
                    ),
                });
            }
        }
    }
    if items.is_empty() {
        return Err(ImportError::Unreadable(
            "The KeyContainer holds no KeyPackage.".into(),
        ));
    }
    Ok(items)
}

fn check_root(doc: &Document, root: &Element) -> Result<(), ImportError> {
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

/// What the reader hands the parser.
enum Node {
    Open(Element),
    Close,
    Text(String),
    End,
}

struct Document<'a> {
    bytes: &'a [u8],
    reader: Reader<&'a [u8]>,
    stack: Vec<Element>,
    /// Elements read in the current top-level part (header element or key package).
    elements: usize,
    /// The last element was empty (`<a/>`): its close is due.
    pending_close: bool,
    /// Byte offset where the last event began.
    event_start: usize,
}

impl Document<'_> {
    fn position(&self) -> usize {
        self.reader.buffer_position() as usize
    }

    fn error(&self, offset: usize, message: impl std::fmt::Display) -> ImportError {
        ImportError::at_line(line_of(self.bytes, offset), message)
    }

    fn next(&mut self) -> Result<Node, ImportError> {
        if std::mem::take(&mut self.pending_close) {
            return Ok(Node::Close);
        }
        loop {
            let before = self.position();
            self.event_start = before;
            let event = self.reader.read_event().map_err(|e| {
                let at = self.reader.error_position() as usize;
                let mut message = e.to_string();
                message.truncate(200);
                self.error(at, format!("the file is not well-formed XML ({message})."))
            })?;
            return Ok(match event {
                Event::Start(start) => Node::Open(self.open(&start, before)?),
                Event::Empty(start) => {
                    // Reported as an open followed by a close.
                    self.pending_close = true;
                    Node::Open(self.open(&start, before)?)
                }
                Event::End(_) => Node::Close,
                Event::Text(t) => Node::Text(t.xml10_content().into_owned()),
                Event::CData(t) => Node::Text(t.xml10_content().into_owned()),
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => Some(c.to_string()),
                        Ok(None) => quick_xml::escape::resolve_predefined_entity(&r)
                            .map(str::to_string),
                        Err(_) => None,
                    };
                    match resolved {
                        Some(text) => Node::Text(text),
                        None => {
                            return Err(self.error(
                                before,
                                format!(
                                    "the entity reference &{}; is not defined; entity declarations are not accepted.",
                                    shown(&r)
                                ),
                            ))
                        }
                    }
                }
                Event::DocType(_) => {
                    return Err(self.error(
                        before,
                        "a DOCTYPE declaration is not accepted in a PSKC file (it could declare entities).",
                    ))
                }
                Event::Decl(decl) => {
                    if let Some(Ok(encoding)) = decl.encoding() {
                        if !matches!(encoding.to_ascii_lowercase().as_str(), "utf-8" | "utf8") {
                            return Err(self.error(
                                before,
                                format!("the XML declaration names the encoding {:?}; send PSKC files as UTF-8.", shown(&encoding)),
                            ));
                        }
                    }
                    continue;
                }
                Event::Comment(_) | Event::PI(_) => continue,
                Event::Eof => Node::End,
            });
        }
    }
}

impl Document<'_> {
    fn open(&mut self, start: &BytesStart, offset: usize) -> Result<Element, ImportError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(
                offset,
                format!("elements nest deeper than {MAX_DEPTH} levels."),
            ));
        }
        self.elements += 1;
        if self.elements > MAX_ELEMENTS {
            return Err(self.error(
                offset,
                format!("a KeyPackage or header element holds more than {MAX_ELEMENTS} elements."),
            ));
        }
        let mut element = Element {
            name: start.local_name().as_ref().to_string(),
            offset,
            ..Element::default()
        };
        for attribute in start.attributes() {
            let attribute = attribute
                .map_err(|e| self.error(offset, format!("an attribute is malformed ({e}).")))?;
            let key = attribute.key;
            if key.as_ref() == "xmlns" || key.as_ref().starts_with("xmlns:") {
                continue;
            }
            if element.attributes.len() == MAX_ATTRIBUTES {
                return Err(self.error(
                    offset,
                    format!("an element has more than {MAX_ATTRIBUTES} attributes."),
                ));
            }
            let value = attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| {
                    self.error(
                        offset,
                        format!("an attribute value of {} cannot be read ({e}); entity declarations are not accepted.", shown(&element.name)),
                    )
                })?;
            element
                .attributes
                .push((key.local_name().as_ref().to_string(), value.into_owned()));
        }
        Ok(element)
    }
}

/// Shortens text from the file for a message.
fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MacAlgorithm {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl MacAlgorithm {
    fn from_uri(uri: &str) -> Option<Self> {
        match uri_suffix(uri).as_str() {
            "hmac-sha1" | "hmacwithsha1" => Some(Self::Sha1),
            "hmac-sha224" | "hmacwithsha224" => Some(Self::Sha224),
            "hmac-sha256" | "hmacwithsha256" => Some(Self::Sha256),
            "hmac-sha384" | "hmacwithsha384" => Some(Self::Sha384),
            "hmac-sha512" | "hmacwithsha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Checks `tag` over `data` in constant time.
    fn verify(self, key: &[u8], data: &[u8], tag: &[u8]) -> bool {
        fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            mac.update(data);
            mac.verify_slice(tag).is_ok()
        }
        match self {
            Self::Sha1 => check::<Hmac<sha1::Sha1>>(key, data, tag),
            Self::Sha224 => check::<Hmac<sha2::Sha224>>(key, data, tag),
            Self::Sha256 => check::<Hmac<sha2::Sha256>>(key, data, tag),
            Self::Sha384 => check::<Hmac<sha2::Sha384>>(key, data, tag),
            Self::Sha512 => check::<Hmac<sha2::Sha512>>(key, data, tag),
        }
    }

    fn pbkdf2(self, password: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) {
        match self {
            Self::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, rounds, out),
            Self::Sha224 => pbkdf2::pbkdf2_hmac::<sha2::Sha224>(password, salt, rounds, out),
            Self::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, rounds, out),
            Self::Sha384 => pbkdf2::pbkdf2_hmac::<sha2::Sha384>(password, salt, rounds, out),
            Self::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, rounds, out),
        }
    }
}

/// How a container's encrypted values are opened.
struct Crypto {
    /// The encryption key, when the request supplied one (derived from the password if the file
    /// says so).
    key: Option<Zeroizing<Vec<u8>>>,
    /// The MAC key and algorithm, or why values cannot be authenticated.
    mac: Result<(MacAlgorithm, Zeroizing<Vec<u8>>), String>,
}

impl Crypto {
    /// Settles the keys from the container header (read before the first key package) and the
    /// request's keys. A file that needs a key the request lacks is refused here.
    fn new(doc: &Document, header: &[Element], keys: &PskcKeys) -> Result<Self, ImportError> {
        let encryption_key = header.iter().find(|e| e.name == "EncryptionKey");
        let mac_method = header.iter().find(|e| e.name == "MACMethod");
        let derived = encryption_key.and_then(|e| e.child("DerivedKey"));
        let key = match derived {
            Some(derived) => {
                let Some(password) = &keys.password else {
                    return Err(doc.error(
                        derived.offset,
                        "the file's keys are derived from a password (DerivedKey): send it in the X-PSKC-Password header.",
                    ));
                };
                Some(derive_key(doc, derived, password)?)
            }
            None => keys.pre_shared.clone(),
        };
        let encrypted =
            encryption_key.is_some() || mac_method.is_some_and(|m| m.child("MACKey").is_some());
        if encrypted && key.is_none() {
            let at = encryption_key.or(mac_method).map_or(0, |e| e.offset);
            return Err(doc.error(
                at,
                "the file is encrypted: name its pre-shared key with the X-PSKC-Key-Id header.",
            ));
        }
        let mac = match (mac_method, &key) {
            (None, _) => Err("the file has no MACMethod to check ValueMAC with".to_string()),
            (Some(_), None) => Err("the MAC key needs the encryption key".to_string()),
            (Some(method), Some(key)) => mac_key(method, key),
        };
        Ok(Self { key, mac })
    }

    /// Authenticates and decrypts an `EncryptedValue` (or `MACKey`) element. Errors are row
    /// messages naming `what`.
    fn open(
        &self,
        what: &str,
        encrypted: &Element,
        value_mac: Option<&Element>,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let key = self
            .key
            .as_deref()
            .ok_or_else(|| format!("{what} is encrypted but the file names no EncryptionKey"))?;
        let cipher_value = cipher_value(what, encrypted)?;
        let Some(value_mac) = value_mac else {
            return Err(format!(
                "{what} is encrypted without a ValueMAC (RFC 6030 requires one with AES-CBC)"
            ));
        };
        let (algorithm, mac_key) = self.mac.as_ref().map_err(|e| format!("{what}: {e}"))?;
        let tag =
            base64(value_mac.trimmed()).ok_or_else(|| format!("{what}: ValueMAC is not base64"))?;
        if !algorithm.verify(mac_key, &cipher_value, &tag) {
            return Err(format!(
                "{what}: ValueMAC does not match (a wrong key or password, or an altered file)"
            ));
        }
        decrypt(what, encrypted, key, &cipher_value)
    }
}

/// The bytes of `CipherData/CipherValue`: IV and ciphertext.
fn cipher_value(what: &str, encrypted: &Element) -> Result<Zeroizing<Vec<u8>>, String> {
    let value = encrypted
        .path(&["CipherData", "CipherValue"])
        .ok_or_else(|| format!("{what}: CipherData/CipherValue is missing"))?;
    base64(value.trimmed()).ok_or_else(|| format!("{what}: CipherValue is not base64"))
}

/// AES-CBC with the IV in the first block. Padding is read from the last byte only, which
/// accepts PKCS#7 and the XML Encryption padding alike.
fn decrypt(
    what: &str,
    encrypted: &Element,
    key: &[u8],
    cipher_value: &[u8],
) -> Result<Zeroizing<Vec<u8>>, String> {
    let uri = encrypted
        .child("EncryptionMethod")
        .and_then(|m| m.attribute("Algorithm"))
        .ok_or_else(|| format!("{what}: EncryptionMethod Algorithm is missing"))?;
    let key_len = match uri_suffix(uri).as_str() {
        "aes128-cbc" => 16,
        "aes192-cbc" => 24,
        "aes256-cbc" => 32,
        _ => {
            return Err(format!(
                "{what}: the encryption algorithm {:?} is not supported (aes128-cbc, aes192-cbc and aes256-cbc are)",
                shown(uri)
            ))
        }
    };
    if key.len() != key_len {
        return Err(format!(
            "{what}: {} needs a {key_len}-byte key, the key given has {} bytes",
            uri_suffix(uri),
            key.len()
        ));
    }
    if cipher_value.len() < 32 || cipher_value.len() % 16 != 0 {
        return Err(format!(
            "{what}: CipherValue is not an IV and whole AES blocks"
        ));
    }
    let (iv, body) = cipher_value.split_at(16);
    let mut plain = Zeroizing::new(body.to_vec());
    let result = match key_len {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv).map(|d| {
            d.decrypt_padded_mut::<aes::cipher::block_padding::NoPadding>(&mut plain)
                .map(|_| ())
        }),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv).map(|d| {
            d.decrypt_padded_mut::<aes::cipher::block_padding::NoPadding>(&mut plain)
                .map(|_| ())
        }),
        _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv).map(|d| {
            d.decrypt_padded_mut::<aes::cipher::block_padding::NoPadding>(&mut plain)
                .map(|_| ())
        }),
    };
    let cannot = || format!("{what} cannot be decrypted (a wrong key or password)");
    result.map_err(|_| cannot())?.map_err(|_| cannot())?;
    let pad = usize::from(*plain.last().ok_or_else(cannot)?);
    if pad == 0 || pad > 16 || pad > plain.len() {
        return Err(cannot());
    }
    let len = plain.len() - pad;
    plain.truncate(len);
    Ok(plain)
}

/// The MAC key of `MACMethod`: its encrypted `MACKey`, or the encryption key itself when the
/// method has none (as early PSKC producers wrote it).
fn mac_key(method: &Element, key: &[u8]) -> Result<(MacAlgorithm, Zeroizing<Vec<u8>>), String> {
    let uri = method.attribute("Algorithm").unwrap_or("");
    let algorithm = MacAlgorithm::from_uri(uri).ok_or_else(|| {
        format!(
            "the MACMethod algorithm {:?} is not supported (HMAC-SHA1 and HMAC-SHA2 are)",
            shown(uri)
        )
    })?;
    let Some(mac_key) = method.child("MACKey") else {
        return Ok((algorithm, Zeroizing::new(key.to_vec())));
    };
    // The MAC key has no MAC of its own: a wrong key shows as a ValueMAC mismatch below, and
    // a failure here reads the same.
    let opened = cipher_value("MACKey", mac_key)
        .and_then(|c| decrypt("MACKey", mac_key, key, &c))
        .map_err(|_| {
        "ValueMAC cannot be checked: the MAC key does not decrypt (a wrong key or password, or an altered file)".to_string()
    })?;
    Ok((algorithm, opened))
}

/// PBKDF2 (RFC 8018) as `DerivedKey/KeyDerivationMethod` describes it.
fn derive_key(
    doc: &Document,
    derived: &Element,
    password: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ImportError> {
    let fail = |e: &Element, m: &str| Err(doc.error(e.offset, m));
    let Some(method) = derived.child("KeyDerivationMethod") else {
        return fail(derived, "DerivedKey has no KeyDerivationMethod.");
    };
    if uri_suffix(method.attribute("Algorithm").unwrap_or("")) != "pbkdf2" {
        return fail(method, "only PBKDF2 key derivation is supported.");
    }
    let Some(params) = method.child("PBKDF2-params") else {
        return fail(method, "KeyDerivationMethod has no PBKDF2-params.");
    };
    let Some(salt) = params
        .path(&["Salt", "Specified"])
        .and_then(|s| base64(s.trimmed()))
    else {
        return fail(params, "PBKDF2-params needs a base64 Salt/Specified.");
    };
    let iterations = params
        .child("IterationCount")
        .and_then(|i| i.trimmed().parse::<u32>().ok())
        .filter(|n| (1..=MAX_ITERATIONS).contains(n));
    let Some(iterations) = iterations else {
        return fail(
            params,
            &format!("PBKDF2-params needs an IterationCount from 1 to {MAX_ITERATIONS}."),
        );
    };
    // Without a KeyLength, the AES-128 key of RFC 6030's examples.
    let length = match params.child("KeyLength") {
        None => 16,
        Some(l) => match l.trimmed().parse::<usize>() {
            Ok(n @ (16 | 24 | 32)) => n,
            _ => return fail(l, "PBKDF2 KeyLength must be 16, 24 or 32 (bytes)."),
        },
    };
    let prf = match params.child("PRF").and_then(|p| p.attribute("Algorithm")) {
        None => MacAlgorithm::Sha1,
        Some(uri) => match MacAlgorithm::from_uri(uri) {
            Some(a) => a,
            None => return fail(params, "the PBKDF2 PRF must be HMAC-SHA1 or HMAC-SHA2."),
        },
    };
    let mut key = Zeroizing::new(vec![0u8; length]);
    prf.pbkdf2(password, &salt, iterations, &mut key);
    Ok(key)
}

/// One key package -> one job item. Problems of the package are an INVALID item; an
/// encrypted value with no key at all refuses the file.
fn key_package(
    doc: &Document,
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
    let shown_serial = serial.as_deref().map(shown_serial);
    let fail = |message: String| Ok(invalid(row_number, shown_serial.clone(), "", message));
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
            "the KeyPackage holds encrypted values: name the file's pre-shared key with X-PSKC-Key-Id, or send its password in X-PSKC-Password.",
        ));
    }

    let mut fields = RowFields::default();
    let mut problems = Vec::new();
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
            Err(e) => problems.push(e),
        },
    }
    // Values that do not apply to the key's algorithm are read (and authenticated) but unused.
    let mut integer_field = |name: &str| -> Option<i64> {
        let element = data.and_then(|d| d.child(name))?;
        integer(crypto, name, element)
            .map_err(|e| problems.push(e))
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
fn binary(crypto: &Crypto, what: &str, element: &Element) -> Result<Zeroizing<Vec<u8>>, String> {
    if let Some(plain) = element.child("PlainValue") {
        return base64(plain.trimmed()).ok_or_else(|| format!("{what} PlainValue is not base64"));
    }
    if let Some(encrypted) = element.child("EncryptedValue") {
        return crypto.open(what, encrypted, element.child("ValueMAC"));
    }
    Err(format!("{what} has neither PlainValue nor EncryptedValue"))
}

/// An integer value (`Counter`, `Time`, `TimeInterval`, `TimeDrift`): decimal `PlainValue`, or
/// an `EncryptedValue` holding decimal digits or a big-endian binary integer.
fn integer(crypto: &Crypto, what: &str, element: &Element) -> Result<i64, String> {
    let signed = what == "TimeDrift";
    let not_integer = || format!("{what} is not an integer");
    if let Some(plain) = element.child("PlainValue") {
        return plain.trimmed().parse::<i64>().map_err(|_| not_integer());
    }
    let Some(encrypted) = element.child("EncryptedValue") else {
        return Err(format!("{what} has neither PlainValue nor EncryptedValue"));
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
            password: None,
        }
    }

    fn password(p: &str) -> PskcKeys {
        PskcKeys {
            pre_shared: None,
            password: Some(Zeroizing::new(p.as_bytes().to_vec())),
        }
    }

    fn parse_ok(name: &str, keys: &PskcKeys) -> Vec<CreateItem> {
        parse(&fixture(name), keys, 1000).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn token(item: &CreateItem) -> &crate::domain::NewToken {
        match item {
            CreateItem::Token(t) => t,
            other => panic!("{other:?}"),
        }
    }

    fn message(item: &CreateItem) -> &str {
        match item {
            CreateItem::Invalid(r) => &r.message,
            other => panic!("{other:?}"),
        }
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
                let m = message(&item);
                assert!(
                    m.contains("ValueMAC cannot be checked")
                        || m.contains("ValueMAC does not match"),
                    "{name}: {m}"
                );
            }
        }
        // A key of the wrong size for the file's algorithm.
        let items = parse_ok("rfc6030-figure6.pskcxml", &pre_shared(&"12".repeat(32)));
        assert!(message(&items[0]).contains("ValueMAC"), "{items:?}");
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
        assert_eq!(
            message(&items[1]),
            "Secret: ValueMAC does not match (a wrong key or password, or an altered file)"
        );
        match &items[1] {
            CreateItem::Invalid(r) => {
                assert_eq!(r.row_number, 2);
                assert_eq!(r.serial_number.as_deref(), Some("EVM0002"));
            }
            other => panic!("{other:?}"),
        }
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

    #[test]
    fn key_package_count_is_bounded() {
        let body = fixture("rfc6030-figure5.pskcxml");
        assert_eq!(
            parse(&body, &PskcKeys::default(), 1).unwrap_err(),
            ImportError::TooManyRows { max: 1 }
        );
    }

    #[test]
    fn encrypted_integers_decode_as_text_or_big_endian() {
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
}
