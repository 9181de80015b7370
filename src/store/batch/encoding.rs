//! A [`TokenBatch`] as one value: how a job's create chunk is stored (`oath_job_chunks.input`),
//! so that PostgreSQL receives, stores and sends one `bytea` per chunk instead of some twenty
//! arrays it takes apart and rebuilds element by element.
//!
//! Layout, little-endian throughout:
//!
//! ```text
//! magic "OTB" | version 1 (u8)
//! tokens n (u32) | invalid items m (u32) | repeated r (u32)
//! n × offset (i32)          n × token id (16 bytes)    n × row number (opt i64)
//! n × serial number (str)   n × token type (str)       n × OTP length (i16)
//! n × hash algorithm (str)  n × counter (opt i64)      n × time step (opt i32)
//! n × drift (i32)           n × secret ciphertext (bytes)
//! n × secret key id (str)   n × masked secret (str)
//! m × offset (i32)          m × row number (i64)       m × serial (opt str)
//! m × message (str)
//! r × repeated position (i32)
//! Adler-32 of everything before it (u32)
//! ```
//!
//! `str` and `bytes` are a u32 length and as many bytes (UTF-8 for `str`); `opt` is a byte, 0
//! (absent) or 1 (present, the value follows). The secrets are the ciphertexts sealed for each
//! token's id, as `oath_tokens` stores them: the value holds no secret in clear.
//!
//! Decoding checks every length against what is left, the checksum, the tags, the UTF-8, the
//! token types and hash algorithms, and that nothing follows; any failure is [`Unreadable`],
//! never a panic.

use uuid::Uuid;

use super::TokenBatch;
use crate::domain::{HashAlgorithm, TokenType};

const MAGIC: &[u8; 3] = b"OTB";
const VERSION: u8 = 1;
const HEADER: usize = MAGIC.len() + 1 + 3 * 4;
const CHECKSUM: usize = 4;
/// The fewest bytes one token takes (every string empty, every option absent).
const MIN_TOKEN: usize = 4 + 16 + 1 + 4 + 4 + 2 + 4 + 1 + 1 + 4 + 4 + 4 + 4;
/// The fewest bytes one invalid item takes.
const MIN_INVALID: usize = 4 + 8 + 1 + 4;

/// Why a stored value is not a [`TokenBatch`]: corrupt, truncated, or of another format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unreadable chunk input: {0}")]
pub struct Unreadable(&'static str);

impl TokenBatch {
    /// The batch as one value ([`TokenBatch::decode`] reads it back).
    pub fn encode(&self) -> Vec<u8> {
        let strings: usize = self.serial_numbers.iter().map(String::len).sum::<usize>()
            + self.secret_ciphertexts.iter().map(Vec::len).sum::<usize>()
            + self.secret_key_ids.iter().map(String::len).sum::<usize>()
            + self.masked_secrets.iter().map(String::len).sum::<usize>()
            + self.invalid_messages.iter().map(String::len).sum::<usize>();
        let mut out = Writer(Vec::with_capacity(
            HEADER
                + self.tokens() * (MIN_TOKEN + 8 + 8 + 4 + 4 + 10)
                + self.invalid_items() * (MIN_INVALID + 40)
                + self.repeated.len() * 4
                + strings
                + CHECKSUM,
        ));
        out.0.extend_from_slice(MAGIC);
        out.0.push(VERSION);
        out.len(self.tokens());
        out.len(self.invalid_items());
        out.len(self.repeated.len());
        self.offsets.iter().for_each(|v| out.i32(*v));
        self.token_ids
            .iter()
            .for_each(|v| out.0.extend_from_slice(v.as_bytes()));
        self.row_numbers.iter().for_each(|v| out.opt_i64(*v));
        self.serial_numbers
            .iter()
            .for_each(|v| out.bytes(v.as_bytes()));
        self.token_types
            .iter()
            .for_each(|v| out.bytes(v.as_str().as_bytes()));
        self.otp_lengths
            .iter()
            .for_each(|v| out.0.extend_from_slice(&v.to_le_bytes()));
        self.hash_algorithms
            .iter()
            .for_each(|v| out.bytes(v.as_str().as_bytes()));
        self.counters.iter().for_each(|v| out.opt_i64(*v));
        self.time_steps.iter().for_each(|v| out.opt_i32(*v));
        self.drifts.iter().for_each(|v| out.i32(*v));
        self.secret_ciphertexts.iter().for_each(|v| out.bytes(v));
        self.secret_key_ids
            .iter()
            .for_each(|v| out.bytes(v.as_bytes()));
        self.masked_secrets
            .iter()
            .for_each(|v| out.bytes(v.as_bytes()));
        self.invalid_offsets.iter().for_each(|v| out.i32(*v));
        self.invalid_row_numbers
            .iter()
            .for_each(|v| out.0.extend_from_slice(&v.to_le_bytes()));
        self.invalid_serials.iter().for_each(|v| match v {
            Some(s) => {
                out.0.push(1);
                out.bytes(s.as_bytes());
            }
            None => out.0.push(0),
        });
        self.invalid_messages
            .iter()
            .for_each(|v| out.bytes(v.as_bytes()));
        self.repeated.iter().for_each(|v| out.i32(*v));
        let sum = adler32(&out.0);
        out.0.extend_from_slice(&sum.to_le_bytes());
        out.0
    }

    /// The batch `bytes` holds, if [`TokenBatch::encode`] wrote it whole; the arrays line up
    /// ([`TokenBatch::is_consistent`]).
    pub fn decode(bytes: &[u8]) -> Result<TokenBatch, Unreadable> {
        if bytes.len() < HEADER + CHECKSUM {
            return Err(Unreadable("too short"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
        if body[..MAGIC.len()] != MAGIC[..] {
            return Err(Unreadable("not an encoded chunk"));
        }
        if body[MAGIC.len()] != VERSION {
            return Err(Unreadable("unknown version"));
        }
        if adler32(body).to_le_bytes() != sum {
            return Err(Unreadable("checksum mismatch"));
        }
        let mut r = Reader {
            rest: &body[MAGIC.len() + 1..],
        };
        let n = r.u32()? as usize;
        let m = r.u32()? as usize;
        let repeated = r.u32()? as usize;
        // Counts no longer than the value could hold, before anything is allocated for them.
        let need = n
            .checked_mul(MIN_TOKEN)
            .and_then(|t| m.checked_mul(MIN_INVALID).and_then(|i| t.checked_add(i)))
            .and_then(|s| repeated.checked_mul(4).and_then(|p| s.checked_add(p)));
        if need.is_none_or(|need| need > r.rest.len()) {
            return Err(Unreadable("counts larger than the value"));
        }
        let batch = TokenBatch {
            offsets: r.many(n, Reader::i32)?,
            token_ids: r.many(n, Reader::uuid)?,
            row_numbers: r.many(n, Reader::opt_i64)?,
            serial_numbers: r.many(n, Reader::string)?,
            token_types: r.many(n, |r| {
                TokenType::parse(r.str()?).ok_or(Unreadable("unknown token type"))
            })?,
            otp_lengths: r.many(n, Reader::i16)?,
            hash_algorithms: r.many(n, |r| {
                HashAlgorithm::parse(r.str()?).ok_or(Unreadable("unknown hash algorithm"))
            })?,
            counters: r.many(n, Reader::opt_i64)?,
            time_steps: r.many(n, Reader::opt_i32)?,
            drifts: r.many(n, Reader::i32)?,
            secret_ciphertexts: r.many(n, |r| r.bytes().map(<[u8]>::to_vec))?,
            secret_key_ids: r.many(n, Reader::string)?,
            masked_secrets: r.many(n, Reader::string)?,
            invalid_offsets: r.many(m, Reader::i32)?,
            invalid_row_numbers: r.many(m, Reader::i64)?,
            invalid_serials: r.many(m, |r| match r.u8()? {
                0 => Ok(None),
                1 => r.string().map(Some),
                _ => Err(Unreadable("bad option tag")),
            })?,
            invalid_messages: r.many(m, Reader::string)?,
            repeated: r.many(repeated, Reader::i32)?,
        };
        if !r.rest.is_empty() {
            return Err(Unreadable("bytes after the last column"));
        }
        if !batch.is_consistent() {
            return Err(Unreadable("columns do not line up"));
        }
        Ok(batch)
    }

    /// The key ids that seal the batch's secrets, each with how many it seals, in order of
    /// first use: what `keys status` counts of a queued chunk without reading its value.
    pub(in crate::store) fn key_counts(&self) -> (Vec<String>, Vec<i32>) {
        let (mut ids, mut counts): (Vec<String>, Vec<i32>) = (Vec::new(), Vec::new());
        for key_id in &self.secret_key_ids {
            match ids.iter().position(|k| k == key_id) {
                Some(at) => counts[at] += 1,
                None => {
                    ids.push(key_id.clone());
                    counts.push(1);
                }
            }
        }
        (ids, counts)
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn len(&mut self, n: usize) {
        // A chunk's columns and values are far below 4 GiB (a request body is limited first).
        let n = u32::try_from(n).expect("a chunk column or value of less than 4 GiB");
        self.0.extend_from_slice(&n.to_le_bytes());
    }

    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn bytes(&mut self, v: &[u8]) {
        self.len(v.len());
        self.0.extend_from_slice(v);
    }

    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => {
                self.0.push(1);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
            None => self.0.push(0),
        }
    }

    fn opt_i32(&mut self, v: Option<i32>) {
        match v {
            Some(v) => {
                self.0.push(1);
                self.i32(v);
            }
            None => self.0.push(0),
        }
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        if n > self.rest.len() {
            return Err(Unreadable("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Unreadable> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn many<T>(
        &mut self,
        n: usize,
        mut one: impl FnMut(&mut Self) -> Result<T, Unreadable>,
    ) -> Result<Vec<T>, Unreadable> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(one(self)?);
        }
        Ok(v)
    }

    fn u8(&mut self) -> Result<u8, Unreadable> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Unreadable> {
        self.array().map(u32::from_le_bytes)
    }

    fn i16(&mut self) -> Result<i16, Unreadable> {
        self.array().map(i16::from_le_bytes)
    }

    fn i32(&mut self) -> Result<i32, Unreadable> {
        self.array().map(i32::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, Unreadable> {
        self.array().map(i64::from_le_bytes)
    }

    fn uuid(&mut self) -> Result<Uuid, Unreadable> {
        self.array().map(Uuid::from_bytes)
    }

    fn opt_i64(&mut self) -> Result<Option<i64>, Unreadable> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.i64().map(Some),
            _ => Err(Unreadable("bad option tag")),
        }
    }

    fn opt_i32(&mut self) -> Result<Option<i32>, Unreadable> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.i32().map(Some),
            _ => Err(Unreadable("bad option tag")),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], Unreadable> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, Unreadable> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Unreadable("text not UTF-8"))
    }

    fn string(&mut self) -> Result<String, Unreadable> {
        self.str().map(str::to_string)
    }
}

/// Adler-32 (RFC 1950): catches a value damaged at rest or cut short, at a fraction of a
/// microsecond per item.
fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    // The most bytes whose sums cannot overflow a u32 before the modulo (zlib's NMAX).
    const NMAX: usize = 5_552;
    let (mut a, mut b) = (1u32, 0u32);
    for block in data.chunks(NMAX) {
        for &byte in block {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Sealed;
    use crate::domain::job::InvalidRow;
    use crate::domain::token::TokenSource;
    use crate::domain::NewToken;
    use serde_json::json;

    const SECRET_HEX: &str = "3132333435363738393031323334353637383930";

    /// Two tokens (HOTP with a row number, TOTP with a drift), an invalid item between them and
    /// a repeat: every column and both forms of every option.
    fn sample() -> TokenBatch {
        let mut b = TokenBatch::default();
        let hotp = NewToken::parse(
            &json!({"serialNumber": "SA1", "secret": SECRET_HEX, "type": "HOTP", "otpLength": 6}),
            TokenSource::JobItem(0),
        )
        .unwrap();
        let mut totp = NewToken::parse(
            &json!({"serialNumber": "SB2", "secret": SECRET_HEX, "type": "TOTP", "otpLength": 8,
                    "hashAlgorithm": "HmacSHA256"}),
            TokenSource::JobItem(0),
        )
        .unwrap();
        totp.row_number = Some(7);
        totp.drift = -2;
        let sealed = |k: &str| Sealed {
            key_id: k.into(),
            ciphertext: vec![0xA5; 48],
        };
        b.push_token(0, Uuid::now_v7(), &hotp, sealed("a"), false);
        b.push_invalid(
            1,
            &InvalidRow {
                row_number: 3,
                serial_number: None,
                message: "secret: not hex".into(),
            },
        );
        b.push_invalid(
            2,
            &InvalidRow {
                row_number: 4,
                serial_number: Some("S-9".into()),
                message: "ünïcode message".into(),
            },
        );
        b.push_token(3, Uuid::now_v7(), &totp, sealed("b"), true);
        assert!(b.is_consistent());
        b
    }

    #[test]
    fn a_batch_reads_back_as_written() {
        for batch in [TokenBatch::default(), sample()] {
            let bytes = batch.encode();
            assert_eq!(TokenBatch::decode(&bytes), Ok(batch));
        }
    }

    #[test]
    fn a_thousand_tokens_read_back_as_written() {
        let one = sample();
        let mut batch = TokenBatch::default();
        for i in 0..1000 {
            let mut token = NewToken::parse(
                &json!({"serialNumber": format!("N{i}"), "secret": SECRET_HEX,
                        "type": "TOTP", "otpLength": 6}),
                TokenSource::JobItem(0),
            )
            .unwrap();
            token.row_number = Some(i64::from(i) + 1);
            let sealed = Sealed {
                key_id: "a".into(),
                ciphertext: one.secret_ciphertexts[0].clone(),
            };
            batch.push_token(i, Uuid::now_v7(), &token, sealed, i % 7 == 3);
        }
        let bytes = batch.encode();
        assert_eq!(TokenBatch::decode(&bytes).as_ref(), Ok(&batch));
        assert_eq!(batch.key_counts(), (vec!["a".to_string()], vec![1000]));
    }

    #[test]
    fn the_value_holds_no_secret_in_clear() {
        let bytes = sample().encode();
        let secret = hex::decode(SECRET_HEX).unwrap();
        for needle in [secret.as_slice(), SECRET_HEX.as_bytes()] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }

    #[test]
    fn every_truncation_is_unreadable() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(TokenBatch::decode(&bytes[..len]).is_err(), "{len} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(TokenBatch::decode(&longer).is_err());
    }

    #[test]
    fn every_damaged_byte_is_unreadable() {
        let bytes = sample().encode();
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                assert!(
                    TokenBatch::decode(&damaged).is_err(),
                    "byte {at} ^ {flip:#x}"
                );
            }
        }
    }

    /// Values written with a valid checksum but a wrong structure (a writer's bug, another
    /// format): each is refused by the structure's own checks, without a panic or an
    /// allocation of what a count claims.
    #[test]
    fn a_well_summed_value_of_another_structure_is_unreadable() {
        let reseal = |mut body: Vec<u8>| {
            let sum = adler32(&body);
            body.extend_from_slice(&sum.to_le_bytes());
            body
        };
        let good = sample().encode();
        let body = good[..good.len() - CHECKSUM].to_vec();
        // Huge counts.
        for at in [4, 8, 12] {
            let mut b = body.clone();
            b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            assert_eq!(
                TokenBatch::decode(&reseal(b)),
                Err(Unreadable("counts larger than the value"))
            );
        }
        // One token fewer than the columns hold: they no longer line up.
        let mut b = body.clone();
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(TokenBatch::decode(&reseal(b)).is_err());
        // A repeated position past the tokens.
        let mut b = body.clone();
        let last = b.len() - 4;
        b[last..].copy_from_slice(&5i32.to_le_bytes());
        assert_eq!(
            TokenBatch::decode(&reseal(b)),
            Err(Unreadable("columns do not line up"))
        );
        // An unknown token type, of the same length.
        let mut b = body.clone();
        let at = b.windows(4).position(|w| w == b"HOTP").unwrap();
        b[at..at + 4].copy_from_slice(b"XOTP");
        assert_eq!(
            TokenBatch::decode(&reseal(b)),
            Err(Unreadable("unknown token type"))
        );
        // Text that is not UTF-8.
        let mut b = body.clone();
        let at = b.windows(3).position(|w| w == b"SA1").unwrap();
        b[at] = 0xFF;
        assert_eq!(
            TokenBatch::decode(&reseal(b)),
            Err(Unreadable("text not UTF-8"))
        );
        // A string's length past the end.
        let mut b = body.clone();
        let at = b.windows(3).position(|w| w == b"SA1").unwrap();
        b[at - 4..at].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(TokenBatch::decode(&reseal(b)), Err(Unreadable("truncated")));
        // Another version.
        let mut b = body;
        b[3] = 2;
        assert_eq!(
            TokenBatch::decode(&reseal(b)),
            Err(Unreadable("unknown version"))
        );
        assert!(TokenBatch::decode(b"").is_err());
    }

    #[test]
    fn adler32_is_rfc_1950s() {
        assert_eq!(adler32(b""), 1);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        // Past one block of sums.
        let long = vec![0xFFu8; 100_000];
        let (mut a, mut b) = (1u64, 0u64);
        for &x in &long {
            a = (a + u64::from(x)) % 65_521;
            b = (b + a) % 65_521;
        }
        assert_eq!(adler32(&long), ((b << 16) | a) as u32);
    }

    #[test]
    fn keys_are_counted_in_order_of_first_use() {
        assert_eq!(
            sample().key_counts(),
            (vec!["a".to_string(), "b".to_string()], vec![1, 1])
        );
    }
}
