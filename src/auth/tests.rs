//! The authenticator against real key sets, tokens and a JWKS server on loopback.

use super::keys::*;
use super::settings::*;
use super::*;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::EncodingKey;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const RSA_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/rsa-private.txt");
const RSA2_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/rsa2-private.txt");
const EC_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/ec-private.txt");
const ED_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/ed-private.txt");
const JWKS: &str = include_str!("../../tests/fixtures/jwt/jwks.json");
const JWKS_ROTATED: &str = include_str!("../../tests/fixtures/jwt/jwks-rotated.json");
const JWKS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/jwks.json");

const ISS: &str = "https://idp.example.test";
const AUD: &str = "oath-service";
const ENV: &str = "4b7d4a66-1a3c-4c38-9a35-0d2f9d1f4e21";
const SECRET: &str = "dev-secret-dev-secret-dev-secret-0123";

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn settings() -> AuthSettings {
    AuthSettings {
        issuer: ISS.into(),
        audience: AUD.into(),
        jwks_path: Some(JWKS_PATH.into()),
        jwks_url: None,
        jwks_ca_file: None,
        allow_http_jwks: false,
        hs256_secret: None,
        leeway_seconds: default_leeway_seconds(),
        jwks_cache_seconds: default_jwks_cache_seconds(),
        jwks_refresh_min_seconds: default_jwks_refresh_min_seconds(),
        token_cache_size: default_token_cache_size(),
    }
}

async fn file_auth() -> Authenticator {
    Authenticator::new(&settings()).await.unwrap()
}

async fn file_and_hs256_auth() -> Authenticator {
    let mut s = settings();
    s.hs256_secret = Some(SECRET.into());
    Authenticator::new(&s).await.unwrap()
}

fn claims() -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "client-1",
        "env": ENV,
        "scope": "oath:tokens:read oath:otp:validate",
        "iat": now(),
        "exp": now() + 300,
    })
}

fn sign_with(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        other => panic!("no test key for {other:?}"),
    };
    sign_with(alg, kid, claims, &key)
}

/// The usual claims, with `claim` set to `value`.
fn claims_with(claim: &str, value: Value) -> Value {
    let mut c = claims();
    c[claim] = value;
    c
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rsa-1"), claims)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn reason(auth: &Authenticator, token: &str) -> String {
    match auth.authenticate(Some(&bearer(token))).await {
        Err(AuthError::Invalid(reason)) => {
            assert!(!reason.contains(token), "reason leaks the token");
            reason
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

async fn assert_rejected(auth: &Authenticator, token: &str, expected: &str) {
    let reason = reason(auth, token).await;
    assert!(
        reason.contains(expected),
        "reason {reason:?} does not mention {expected:?}"
    );
}

/// A token of the usual claims, signed with `alg` by the set's key for it, is refused.
async fn assert_signed_rejected(
    auth: &Authenticator,
    alg: Algorithm,
    kid: Option<&str>,
    expected: &str,
) {
    assert_rejected(auth, &sign(alg, kid, &claims()), expected).await;
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn env() -> Uuid {
    Uuid::parse_str(ENV).unwrap()
}

#[test]
fn authenticator_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Authenticator>();
    check::<Arc<Authenticator>>();
}

#[tokio::test]
async fn accepts_rs256_es256_eddsa_and_hs256() {
    let auth = file_and_hs256_auth().await;
    let tokens = [
        sign(Algorithm::RS256, Some("rsa-1"), &claims()),
        sign(Algorithm::ES256, Some("ec-1"), &claims()),
        sign(Algorithm::EdDSA, Some("ed-1"), &claims()),
        sign(Algorithm::HS256, None, &claims()),
    ];
    for token in tokens {
        let p = auth.authenticate(Some(&bearer(&token))).await.unwrap();
        assert_eq!(p.env, env());
        assert_eq!(p.subject.as_deref(), Some("client-1"));
    }
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let auth = file_auth().await;
    let token = rs256(&claims());
    for header in [format!("bearer {token}"), format!("BEARER  {token} ")] {
        auth.authenticate(Some(&header)).await.unwrap();
    }
}

#[tokio::test]
async fn scopes_are_parsed() {
    let auth = file_auth().await;
    let p = auth
        .authenticate(Some(&bearer(&rs256(&claims()))))
        .await
        .unwrap();
    assert!(p.has_scope(Scope::TokensRead));
    assert!(p.has_scope(Scope::OtpValidate));
    assert!(!p.has_scope(Scope::TokensWrite));
    assert_eq!(p.scopes(), ["oath:otp:validate", "oath:tokens:read"]);

    let mut c = claims();
    c.as_object_mut().unwrap().remove("scope");
    let p = auth.authenticate(Some(&bearer(&rs256(&c)))).await.unwrap();
    assert!(Scope::ALL.iter().all(|s| !p.has_scope(*s)));
}

#[test]
fn scope_strings() {
    let names: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "oath:tokens:read",
            "oath:tokens:write",
            "oath:jobs:read",
            "oath:jobs:write",
            "oath:otp:validate",
            "oath:activities:read",
            "oath:subscriptions:read",
            "oath:subscriptions:write"
        ]
    );
}

#[test]
fn require_checks_scope_then_environment() {
    let p = Principal::new(env(), None, ["oath:tokens:read"]);
    assert!(p.require(env(), Scope::TokensRead).is_ok());
    match p.require(env(), Scope::TokensWrite) {
        Err(AuthError::Forbidden(m)) => {
            assert_eq!(m, "the access token lacks the scope oath:tokens:write")
        }
        other => panic!("{other:?}"),
    }
    match p.require(Uuid::new_v4(), Scope::TokensRead) {
        Err(AuthError::Forbidden(m)) => {
            assert_eq!(m, "the access token is not valid for this environment")
        }
        other => panic!("{other:?}"),
    }
    // Scope is checked first, so a wrong env with a missing scope reports the scope.
    match p.require(Uuid::new_v4(), Scope::JobsRead) {
        Err(AuthError::Forbidden(m)) => assert!(m.contains("oath:jobs:read")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn missing_header_and_wrong_scheme() {
    let auth = file_auth().await;
    assert!(matches!(
        auth.authenticate(None).await,
        Err(AuthError::Missing)
    ));
    assert!(matches!(
        auth.authenticate(Some("  ")).await,
        Err(AuthError::Missing)
    ));
    let token = rs256(&claims());
    match auth.authenticate(Some(&format!("Basic {token}"))).await {
        Err(AuthError::Invalid(r)) => assert!(r.contains("not Bearer")),
        other => panic!("{other:?}"),
    }
    match auth.authenticate(Some("Bearer")).await {
        Err(AuthError::Invalid(r)) => assert!(r.contains("empty")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn malformed_tokens_rejected() {
    let auth = file_auth().await;
    assert_rejected(&auth, "abc", "malformed").await;
    assert_rejected(&auth, "a.b.c.d", "malformed").await;
    assert_rejected(&auth, "!!!.e30.sig", "malformed").await;
    let header = URL_SAFE_NO_PAD.encode("not json");
    assert_rejected(&auth, &format!("{header}.e30.sig"), "malformed").await;
    let header = b64(&json!({"typ": "JWT"}));
    assert_rejected(&auth, &format!("{header}.e30.sig"), "no alg").await;
    let header = b64(&json!({"alg": "XS999"}));
    assert_rejected(&auth, &format!("{header}.e30.sig"), "unsupported algorithm").await;
}

#[tokio::test]
async fn alg_none_rejected_in_any_case() {
    let auth = file_and_hs256_auth().await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "typ": "JWT"})),
            b64(&claims())
        );
        assert_rejected(&auth, &token, "alg none").await;
    }
}

#[tokio::test]
async fn hs256_rejected_without_secret() {
    let auth = file_auth().await;
    assert_signed_rejected(
        &auth,
        Algorithm::HS256,
        None,
        "hs256_secret is not configured",
    )
    .await;
    // Even when signed with the public key bytes, as in the classic confusion attack.
    let token = sign_with(
        Algorithm::HS256,
        Some("rsa-1"),
        &claims(),
        &EncodingKey::from_secret(JWKS.as_bytes()),
    );
    assert_rejected(&auth, &token, "hs256_secret is not configured").await;
}

/// PKCS#1 RSAPublicKey DER of the `rsa-1` JWK, i.e. what an attacker can derive from the JWKS.
fn rsa1_public_der() -> Vec<u8> {
    fn der_len(len: usize, out: &mut Vec<u8>) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    fn der_uint(mut bytes: Vec<u8>, out: &mut Vec<u8>) {
        if bytes[0] & 0x80 != 0 {
            bytes.insert(0, 0);
        }
        out.push(0x02);
        der_len(bytes.len(), out);
        out.extend(bytes);
    }
    let jwks: Value = serde_json::from_str(JWKS).unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kid"], "rsa-1");
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
    let mut body = Vec::new();
    der_uint(n, &mut body);
    der_uint(e, &mut body);
    let mut der = vec![0x30];
    der_len(body.len(), &mut der);
    der.extend(body);
    der
}

#[tokio::test]
async fn hs256_signed_with_rsa_public_key_rejected() {
    let auth = file_and_hs256_auth().await;
    let der = rsa1_public_der();
    let body = STANDARD.encode(&der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
        lines.join("\n")
    );
    // Sanity: the DER really is the rsa-1 public key, so the attack below is the real one.
    let rs = rs256(&claims());
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[AUD]);
    jsonwebtoken::decode::<Value>(&rs, &DecodingKey::from_rsa_der(&der), &v).unwrap();

    for secret in [der.as_slice(), pem.as_bytes(), JWKS.as_bytes()] {
        let key = EncodingKey::from_secret(secret);
        for kid in [Some("rsa-1"), None] {
            let token = sign_with(Algorithm::HS256, kid, &claims(), &key);
            assert_rejected(&auth, &token, "bad signature").await;
        }
    }
}

#[tokio::test]
async fn algorithm_not_allowed_by_key_rejected() {
    let auth = file_auth().await;
    // An RS256 header naming the EC key.
    assert_signed_rejected(&auth, Algorithm::RS256, Some("ec-1"), "not allowed for key").await;
    // An ES256 header naming the RSA key.
    assert_signed_rejected(
        &auth,
        Algorithm::ES256,
        Some("rsa-1"),
        "not allowed for key",
    )
    .await;
    // Algorithms outside RS256/ES256/EdDSA/HS256 are refused outright.
    let token = format!(
        "{}.{}.sig",
        b64(&json!({"alg": "RS512", "kid": "rsa-1"})),
        b64(&claims())
    );
    assert_rejected(&auth, &token, "not accepted").await;
}

#[tokio::test]
async fn token_without_kid_needs_a_unique_key() {
    let auth = file_auth().await;
    // One key per algorithm in jwks.json, so no kid is fine.
    let token = sign(Algorithm::ES256, None, &claims());
    auth.authenticate(Some(&bearer(&token))).await.unwrap();

    let mut s = settings();
    s.jwks_path = Some(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/jwt/jwks-rotated.json"
        )
        .into(),
    );
    let rotated = Authenticator::new(&s).await.unwrap();
    assert_signed_rejected(&rotated, Algorithm::RS256, None, "a kid is required").await;
    assert_signed_rejected(&rotated, Algorithm::EdDSA, None, "no EdDSA key").await;
}

#[tokio::test]
async fn expiry_honours_leeway() {
    let auth = file_auth().await;
    let mut c = claims();
    c["exp"] = json!(now() - 30);
    auth.authenticate(Some(&bearer(&rs256(&c)))).await.unwrap();
    c["exp"] = json!(now() - 120);
    assert_rejected(&auth, &rs256(&c), "expired").await;
}

#[tokio::test]
async fn nbf_in_future_rejected() {
    let auth = file_auth().await;
    let mut c = claims();
    c["nbf"] = json!(now() + 30);
    auth.authenticate(Some(&bearer(&rs256(&c)))).await.unwrap();
    c["nbf"] = json!(now() + 600);
    assert_rejected(&auth, &rs256(&c), "not yet valid").await;
}

#[tokio::test]
async fn wrong_issuer_and_audience_rejected() {
    let auth = file_auth().await;
    let c = claims_with("iss", json!("https://evil.example.test"));
    assert_rejected(&auth, &rs256(&c), "wrong issuer").await;
    for aud in [
        json!("another-service"),
        json!(["another-service", "third"]),
    ] {
        assert_rejected(&auth, &rs256(&claims_with("aud", aud)), "wrong audience").await;
    }
}

#[tokio::test]
async fn audience_array_containing_ours_accepted() {
    let auth = file_auth().await;
    let c = claims_with("aud", json!(["another-service", AUD]));
    auth.authenticate(Some(&bearer(&rs256(&c)))).await.unwrap();
}

#[tokio::test]
async fn missing_claims_rejected() {
    let auth = file_auth().await;
    for claim in ["exp", "iss", "aud", "env"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(claim);
        assert_rejected(&auth, &rs256(&c), &format!("missing {claim} claim")).await;
    }
}

#[tokio::test]
async fn env_must_be_a_uuid() {
    let auth = file_auth().await;
    for env in [json!("production"), json!(42)] {
        assert_rejected(&auth, &rs256(&claims_with("env", env)), "not a UUID").await;
    }
}

#[tokio::test]
async fn tampered_payload_rejected() {
    let auth = file_auth().await;
    let token = rs256(&claims());
    let dot = token.find('.').unwrap();
    let at = dot + 10;
    let mut bytes = token.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert_rejected(&auth, &tampered, "bad signature").await;
    // Signed by a key that is not in the set but claims a known kid.
    let foreign = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
    let token = sign_with(Algorithm::RS256, Some("rsa-1"), &claims(), &foreign);
    assert_rejected(&auth, &token, "bad signature").await;
}

#[tokio::test]
async fn unknown_kid_rejected() {
    let auth = file_auth().await;
    assert_signed_rejected(&auth, Algorithm::RS256, Some("rsa-9"), "unknown kid").await;
}

#[tokio::test]
async fn settings_are_checked() {
    let mut s = settings();
    assert!(s.check().is_ok());
    s.jwks_path = None;
    assert_eq!(
        s.check().unwrap_err(),
        "auth.jwks_path, auth.jwks_url or auth.hs256_secret must be set"
    );
    s.hs256_secret = Some("short".into());
    assert_eq!(
        s.check().unwrap_err(),
        "auth.hs256_secret must be at least 32 bytes"
    );
    s.hs256_secret = Some(SECRET.into());
    assert!(s.check().is_ok());
    s.issuer = " ".into();
    assert!(s.check().unwrap_err().contains("auth.issuer"));
    s.issuer = ISS.into();
    s.audience = String::new();
    assert!(s.check().unwrap_err().contains("auth.audience"));
    let debug = format!("{s:?}");
    assert!(debug.contains("[redacted]") && !debug.contains(SECRET));
}

#[tokio::test]
async fn jwks_url_is_https_unless_http_is_allowed() {
    let mut s = url_settings("http://127.0.0.1:9/jwks.json?key=hunter2", 300, 30);
    s.allow_http_jwks = false;
    let err = s.check().unwrap_err();
    assert!(
        err.starts_with("auth.jwks_url must be an https:// URL")
            && err.contains("auth.allow_http_jwks"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the URL stays out: {err}");
    assert_eq!(Authenticator::new(&s).await.unwrap_err(), err);
    s.jwks_url = Some("ftp://127.0.0.1/jwks.json".into());
    assert_eq!(
        s.check().unwrap_err(),
        "auth.jwks_url must be an https:// URL"
    );
    s.jwks_url = Some("HTTPS://idp.example.test/jwks.json".into());
    assert!(s.check().is_ok());
    s.jwks_url = Some("http://127.0.0.1:9/jwks.json".into());
    s.allow_http_jwks = true;
    assert!(s.check().is_ok());
}

#[tokio::test]
async fn bad_jwks_ca_file_names_the_setting() {
    let mut s = settings();
    for (path, why) in [
        ("/nonexistent/ca.pem", "cannot read"),
        (JWKS_PATH, "holds no PEM certificate"),
    ] {
        s.jwks_ca_file = Some(path.into());
        let err = Authenticator::new(&s).await.err().unwrap();
        assert!(err.starts_with("auth.jwks_ca_file: "), "{err}");
        assert!(err.contains(why), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn settings_defaults_from_serde() {
    let s: AuthSettings =
        serde_json::from_value(json!({"issuer": ISS, "audience": AUD, "jwks_url": "https://x"}))
            .unwrap();
    assert_eq!(
        (
            s.leeway_seconds,
            s.jwks_cache_seconds,
            s.jwks_refresh_min_seconds
        ),
        (60, 300, 30)
    );
    assert!(s.jwks_path.is_none() && s.hs256_secret.is_none());
    assert!(s.jwks_ca_file.is_none() && !s.allow_http_jwks);
}

#[tokio::test]
async fn bad_jwks_file_names_the_setting() {
    let mut s = settings();
    s.jwks_path = Some("/nonexistent/jwks.json".into());
    let err = Authenticator::new(&s).await.err().unwrap();
    assert!(err.starts_with("auth.jwks_path"), "{err}");
    s.jwks_path = Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/README.md").into());
    let err = Authenticator::new(&s).await.err().unwrap();
    assert!(err.starts_with("auth.jwks_path"), "{err}");
}

#[test]
fn unusable_jwks_entries_are_skipped() {
    let doc = json!({"keys": [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": "AA"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
        {"kty": "weird"},
        serde_json::from_str::<Value>(JWKS).unwrap()["keys"][1].clone(),
    ]});
    let set = KeySet::parse(doc.to_string().as_bytes(), "test").unwrap();
    let kids: Vec<_> = set.keys.iter().map(|k| (k.kid.clone(), k.alg)).collect();
    assert_eq!(kids, [(Some("ec-1".to_owned()), Algorithm::ES256)]);
    // A JWK without alg gets one derived from its type.
    let mut ed = serde_json::from_str::<Value>(JWKS).unwrap()["keys"][2].clone();
    ed.as_object_mut().unwrap().remove("alg");
    let set = KeySet::parse(json!({"keys": [ed]}).to_string().as_bytes(), "test").unwrap();
    assert_eq!(set.keys[0].alg, Algorithm::EdDSA);
    assert!(KeySet::parse(br#"{"keys": []}"#, "test").is_err());
}

#[tokio::test]
async fn dev_token_round_trip() {
    let mut s = settings();
    s.jwks_path = None;
    let scopes = vec!["oath:tokens:read".to_owned(), "oath:jobs:write".to_owned()];
    assert!(mint_dev_token(&s, env(), &scopes, Duration::from_secs(60)).is_err());
    s.hs256_secret = Some(SECRET.into());
    let token = mint_dev_token(&s, env(), &scopes, Duration::from_secs(60)).unwrap();
    let auth = Authenticator::new(&s).await.unwrap();
    let p = auth.authenticate(Some(&bearer(&token))).await.unwrap();
    assert_eq!(p.env, env());
    assert_eq!(p.subject.as_deref(), Some("dev"));
    assert!(p.require(env(), Scope::JobsWrite).is_ok());
    assert!(!p.has_scope(Scope::TokensWrite));
    let bad = vec!["a b".to_owned()];
    assert!(mint_dev_token(&s, env(), &bad, Duration::from_secs(60)).is_err());
}

/// A minimal HTTP/1.1 server on 127.0.0.1 serving a JWKS that the test can swap, counting GETs.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(body: &str) -> JwksServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let body = Arc::new(Mutex::new(body.to_owned()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counter) = (body.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
            }
        });
        JwksServer { url, body, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn serve(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_owned();
    }
}

fn url_settings(url: &str, cache: u64, refresh_min: u64) -> AuthSettings {
    AuthSettings {
        jwks_path: None,
        jwks_url: Some(url.to_owned()),
        // These tests serve the key set over plain HTTP; tests/api/jwks_https.rs does TLS.
        allow_http_jwks: true,
        jwks_cache_seconds: cache,
        jwks_refresh_min_seconds: refresh_min,
        ..settings()
    }
}

fn rsa2_token() -> String {
    let key = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
    sign_with(Algorithm::RS256, Some("rsa-2"), &claims(), &key)
}

#[tokio::test]
async fn jwks_url_unknown_kid_refetches_within_rate_limit() {
    // Signed up front so that the 1 s rate-limit window only covers verification.
    let rsa1 = rs256(&claims());
    let ec1 = sign(Algorithm::ES256, Some("ec-1"), &claims());
    let rsa2 = rsa2_token();
    let unknown: Vec<String> = (10..15)
        .map(|i| sign(Algorithm::RS256, Some(&format!("rsa-{i}")), &claims()))
        .collect();
    // What must happen inside a 1 s window is asserted only when the checks ran inside it; a
    // machine too slow for that runs the scenario again, with a new server and authenticator.
    for _ in 0..20 {
        if rotation_within_rate_limit(&rsa1, &ec1, &rsa2, &unknown).await {
            return;
        }
    }
    panic!("the checks never ran inside the 1 s window in 20 attempts");
}

/// The rotation scenario; false when a check meant for inside the window came too late.
async fn rotation_within_rate_limit(rsa1: &str, ec1: &str, rsa2: &str, unknown: &[String]) -> bool {
    const WINDOW: Duration = Duration::from_secs(1);
    let server = JwksServer::start(JWKS);
    let started = std::time::Instant::now();
    let auth = Authenticator::new(&url_settings(&server.url, 300, 1))
        .await
        .unwrap();
    assert_eq!(server.hits(), 1, "start-up fetch");
    for _ in 0..3 {
        auth.authenticate(Some(&bearer(rsa1))).await.unwrap();
        auth.authenticate(Some(&bearer(ec1))).await.unwrap();
    }
    assert_eq!(server.hits(), 1, "known kids are served from the cache");

    // Key rotation: rsa-2 appears, but the start-up fetch is still inside the window.
    server.serve(JWKS_ROTATED);
    let rejected = auth.authenticate(Some(&bearer(rsa2))).await;
    if started.elapsed() >= WINDOW {
        return false;
    }
    assert!(rejected.is_err(), "unknown kid inside the window");
    assert_eq!(server.hits(), 1, "refetch is rate-limited");

    // Past the window, the unknown kid triggers one refetch: wait for it to be accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let refetched = loop {
        let before = std::time::Instant::now();
        if let Ok(p) = auth.authenticate(Some(&bearer(rsa2))).await {
            assert_eq!(p.env, env());
            break before;
        }
        assert_eq!(server.hits(), 1, "no refetch inside the window");
        assert!(std::time::Instant::now() < deadline, "rsa-2 never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(server.hits(), 2, "unknown kid triggered one refetch");

    // More unknown kids inside the new window: no more fetches.
    let mut results = Vec::new();
    for token in unknown {
        results.push(auth.authenticate(Some(&bearer(token))).await.is_err());
    }
    // The rotated set replaced the old one: rsa-1 is still there, ec-1 is gone.
    let rsa1_ok = auth.authenticate(Some(&bearer(rsa1))).await.is_ok();
    let ec1_rejected = auth.authenticate(Some(&bearer(ec1))).await.is_err();
    if refetched.elapsed() >= WINDOW {
        return false;
    }
    assert!(results.iter().all(|r| *r), "unknown kids rejected");
    assert!(rsa1_ok && ec1_rejected);
    assert_eq!(server.hits(), 2);
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kids_do_not_stampede() {
    // Half the tasks carry the rotated key, half a kid that exists nowhere.
    let tokens: Vec<(bool, String)> = (0..16)
        .map(|i| match i % 2 {
            0 => (true, rsa2_token()),
            _ => (
                false,
                sign(Algorithm::RS256, Some(&format!("gone-{i}")), &claims()),
            ),
        })
        .collect();
    let server = JwksServer::start(JWKS);
    let auth = Arc::new(
        Authenticator::new(&url_settings(&server.url, 300, 1))
            .await
            .unwrap(),
    );
    server.serve(JWKS_ROTATED);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for (valid, token) in tokens {
        let auth = auth.clone();
        tasks.spawn(async move { (valid, auth.authenticate(Some(&bearer(&token))).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        let (valid, result) = joined.unwrap();
        assert_eq!(result.is_ok(), valid, "{result:?}");
    }
    assert_eq!(
        server.hits(),
        2,
        "one start-up fetch plus exactly one refetch"
    );
}

#[tokio::test]
async fn jwks_url_cache_expires() {
    let server = JwksServer::start(JWKS);
    let auth = Authenticator::new(&url_settings(&server.url, 1, 0))
        .await
        .unwrap();
    auth.authenticate(Some(&bearer(&rs256(&claims()))))
        .await
        .unwrap();
    assert_eq!(server.hits(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    auth.authenticate(Some(&bearer(&rs256(&claims()))))
        .await
        .unwrap();
    assert_eq!(server.hits(), 2, "stale cache refreshed");
}

#[tokio::test]
async fn jwks_url_unreachable_without_cache() {
    // Bind then drop to get a local port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/jwks.json");
    let auth = Authenticator::new(&url_settings(&url, 300, 0))
        .await
        .unwrap();
    match auth.authenticate(Some(&bearer(&rs256(&claims())))).await {
        Err(AuthError::KeySetUnavailable(why)) => {
            assert!(why.contains("request failed"), "{why}");
            assert!(!why.contains(&url), "the URL stays out of messages: {why}");
        }
        other => panic!("expected KeySetUnavailable, got {other:?}"),
    }
    // HS256 still works when configured, since it needs no key set.
    let mut s = url_settings(&url, 300, 30);
    s.hs256_secret = Some(SECRET.into());
    let auth = Authenticator::new(&s).await.unwrap();
    let token = sign(Algorithm::HS256, None, &claims());
    auth.authenticate(Some(&bearer(&token))).await.unwrap();
    assert!(matches!(
        auth.authenticate(Some(&bearer(&rs256(&claims())))).await,
        Err(AuthError::KeySetUnavailable(_))
    ));
}

// --- the verified-token cache ------------------------------------------------------------------

fn hs256_auth_settings(cache: usize, leeway: u64) -> AuthSettings {
    AuthSettings {
        jwks_path: None,
        hs256_secret: Some(SECRET.into()),
        token_cache_size: cache,
        leeway_seconds: leeway,
        ..settings()
    }
}

/// Sleeps until the clock `jsonwebtoken` reads is past `exp`.
async fn sleep_past(exp: i64) {
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn cached_entry_is_never_used_at_or_past_exp() {
    let cache = super::cache::TokenCache::new(100);
    let p = Principal::new(env(), None, ["oath:tokens:read"]);
    let key = super::cache::token_hash("a");
    cache.insert(key, 0, 1_000, 1_060, &p, false);
    let hit = cache.get(&key, 0, 1_059).expect("before exp");
    assert_eq!(
        (hit.principal.env, hit.principal.scopes()),
        (env(), p.scopes())
    );
    assert!(cache.get(&key, 0, 1_060).is_none(), "at exp");
    assert_eq!(cache.len(), 0, "dropped at exp");
    assert!(cache.get(&key, 0, 1_059).is_none(), "gone for good");
    // A token verified at or past its exp (the leeway allows it) is not stored.
    cache.insert(key, 0, 1_060, 1_060, &p, false);
    cache.insert(key, 0, 1_070, 1_060, &p, false);
    assert_eq!(cache.len(), 0);
}

#[tokio::test]
async fn a_cached_token_expires_at_exp_whatever_the_leeway() {
    // Two seconds ahead: the first requests must come before exp to be stored. A machine too
    // slow for that tries again with a later exp and new authenticators.
    let (token, exp, lenient, strict) = 'stored: {
        for _ in 0..20 {
            let exp = now() + 2;
            let mut c = claims();
            c["exp"] = json!(exp);
            let token = sign(Algorithm::HS256, None, &c);
            let lenient = Authenticator::new(&hs256_auth_settings(100, 60))
                .await
                .unwrap();
            let strict = Authenticator::new(&hs256_auth_settings(100, 0))
                .await
                .unwrap();
            for auth in [&lenient, &strict] {
                auth.authenticate(Some(&bearer(&token))).await.unwrap();
                auth.authenticate(Some(&bearer(&token))).await.unwrap();
            }
            if now() < exp {
                break 'stored (token, exp, lenient, strict);
            }
        }
        panic!("never verified a token before its exp in 20 attempts");
    };
    for auth in [&lenient, &strict] {
        assert_eq!(auth.cached_tokens(), 1, "stored before exp");
    }
    sleep_past(exp).await;
    // Without leeway the token is refused, though it was cached.
    assert_rejected(&strict, &token, "expired").await;
    // The leeway still lets the full verification accept it, but the entry is dropped at exp and
    // the new result is not stored.
    lenient.authenticate(Some(&bearer(&token))).await.unwrap();
    assert_eq!(lenient.cached_tokens(), 0);
}

#[tokio::test]
async fn the_cache_is_bounded_and_holds_verified_tokens_only() {
    let auth = Authenticator::new(&hs256_auth_settings(10, 60))
        .await
        .unwrap();
    for n in 0..100 {
        let mut c = claims();
        c["jti"] = json!(n);
        auth.authenticate(Some(&bearer(&sign(Algorithm::HS256, None, &c))))
            .await
            .unwrap();
        assert!(
            auth.cached_tokens() <= 10,
            "{} after {n}",
            auth.cached_tokens()
        );
    }
    assert!(auth.cached_tokens() >= 5);
    let cache = super::cache::TokenCache::new(1_000);
    let p = Principal::new(env(), None, Vec::<String>::new());
    for n in 0..20_000u32 {
        cache.insert(
            super::cache::token_hash(&n.to_string()),
            0,
            0,
            60,
            &p,
            false,
        );
        assert!(cache.len() <= 1_000);
    }

    // Refused tokens are not stored; 0 turns the cache off.
    let auth = Authenticator::new(&hs256_auth_settings(10, 60))
        .await
        .unwrap();
    let mut c = claims();
    c["env"] = json!("production");
    assert_rejected(&auth, &sign(Algorithm::HS256, None, &c), "not a UUID").await;
    let key = EncodingKey::from_secret(b"another-secret-another-secret-0123");
    let forged = sign_with(Algorithm::HS256, None, &claims(), &key);
    assert_rejected(&auth, &forged, "bad signature").await;
    assert_rejected(&auth, &forged, "bad signature").await;
    assert_eq!(auth.cached_tokens(), 0);
    let off = Authenticator::new(&hs256_auth_settings(0, 60))
        .await
        .unwrap();
    off.authenticate(Some(&bearer(&sign(Algorithm::HS256, None, &claims()))))
        .await
        .unwrap();
    assert_eq!(off.cached_tokens(), 0);
    let mut s = hs256_auth_settings(1, 60);
    assert!(s.check().unwrap_err().contains("auth.token_cache_size"));
    s.token_cache_size = 10_000_001;
    assert!(s.check().unwrap_err().contains("auth.token_cache_size"));
}

#[tokio::test]
async fn other_keys_from_the_jwks_url_drop_cached_tokens() {
    let rsa1 = rs256(&claims());
    let rsa2 = rsa2_token();
    let unknown = sign(Algorithm::RS256, Some("rsa-9"), &claims());
    let server = JwksServer::start(JWKS_ROTATED);
    let auth = Authenticator::new(&url_settings(&server.url, 300, 0))
        .await
        .unwrap();
    let epoch = auth.keys_epoch();
    for _ in 0..2 {
        auth.authenticate(Some(&bearer(&rsa1))).await.unwrap();
        auth.authenticate(Some(&bearer(&rsa2))).await.unwrap();
    }
    assert_eq!((auth.cached_tokens(), server.hits()), (2, 1));

    // The same keys again (another layout): nothing changes.
    let reformatted: Value = serde_json::from_str(JWKS_ROTATED).unwrap();
    server.serve(&serde_json::to_string_pretty(&reformatted).unwrap());
    assert_rejected(&auth, &unknown, "unknown kid").await;
    assert_eq!((server.hits(), auth.keys_epoch()), (2, epoch));
    auth.authenticate(Some(&bearer(&rsa2))).await.unwrap();
    assert_eq!(auth.cached_tokens(), 2);

    // rsa-2 withdrawn: the fetch that an unknown kid triggers drops every cached token.
    server.serve(JWKS);
    assert_rejected(&auth, &unknown, "unknown kid").await;
    assert_eq!(server.hits(), 3);
    assert_rejected(&auth, &rsa2, "unknown kid").await;
    auth.authenticate(Some(&bearer(&rsa1))).await.unwrap();
    assert_eq!(auth.cached_tokens(), 1, "rsa-1 verified again, alone");
}

#[tokio::test]
async fn a_cached_token_does_not_outlive_its_jwks_url_key_set() {
    let rsa2 = rsa2_token();
    let server = JwksServer::start(JWKS_ROTATED);
    let auth = Authenticator::new(&url_settings(&server.url, 1, 0))
        .await
        .unwrap();
    auth.authenticate(Some(&bearer(&rsa2))).await.unwrap();
    auth.authenticate(Some(&bearer(&rsa2))).await.unwrap();
    assert_eq!((auth.cached_tokens(), server.hits()), (1, 1));
    server.serve(JWKS);
    // Past the key set's lifetime a cached token refreshes it, as a verification would.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_rejected(&auth, &rsa2, "unknown kid").await;
    assert!(server.hits() >= 2);
}
