//! Authentication and authorisation over HTTP: every attack of the contract is refused, with the
//! right status and `WWW-Authenticate`, before anything is looked up.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use oath_service::auth::Scope;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{
    assert_error, assert_error_mentions, expect_error, parts, seed_token, send, spawn_app,
    spawn_app_with, TestApp,
};

const RSA: &str = include_str!("../fixtures/jwt/rsa-private.txt");
const EC: &str = include_str!("../fixtures/jwt/ec-private.txt");
const ED: &str = include_str!("../fixtures/jwt/ed-private.txt");
const JWKS: &str = include_str!("../fixtures/jwt/jwks.json");

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(crate) fn claims(app: &TestApp) -> Value {
    json!({
        "iss": app.settings.auth.issuer,
        "aud": app.settings.auth.audience,
        "exp": now() + 300,
        "iat": now(),
        "env": app.env.to_string(),
        "scope": "oath:tokens:read oath:tokens:write",
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED.as_bytes()).unwrap(),
        other => panic!("no fixture key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &key).unwrap()
}

pub(crate) fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rsa-1"), claims)
}

fn with(mut claims: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

async fn list_with(app: &TestApp, authorization: Option<String>) -> (u16, Value, Option<String>) {
    let mut req = app.client.get(app.url(&app.tokens_path()));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let res = req.send().await.unwrap();
    let www = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = parts(res).await;
    (status, body, www)
}

async fn assert_401(app: &TestApp, authorization: Option<String>, case: &str) {
    let sent = authorization.is_some();
    let (status, body, www) = list_with(app, authorization).await;
    assert_eq!(status, 401, "{case}: {body}");
    assert_error(status, &body, 401, "ACCESS_FAILED");
    let want = if sent {
        "Bearer error=\"invalid_token\""
    } else {
        "Bearer"
    };
    assert_eq!(www.as_deref(), Some(want), "{case}");
}

#[sqlx::test]
async fn asymmetric_and_hs256_tokens_are_accepted(pool: PgPool) {
    let app = spawn_app(pool).await;
    let c = claims(&app);
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::EdDSA, "ed-1"),
    ] {
        let (status, body, _) =
            list_with(&app, Some(format!("Bearer {}", sign(alg, Some(kid), &c)))).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
    }
    let (status, _, _) = list_with(
        &app,
        Some(format!("bearer {}", app.token(&[Scope::TokensRead]))),
    )
    .await;
    assert_eq!(status, 200);
    // Audience as an array that contains ours; expired but within the 60 s leeway.
    for patch in [
        json!({"aud": ["other", "oath-service"]}),
        json!({"exp": now() - 30}),
    ] {
        let (status, body, _) = list_with(
            &app,
            Some(format!("Bearer {}", rs256(&with(c.clone(), patch)))),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
}

#[sqlx::test]
async fn bad_tokens_are_401(pool: PgPool) {
    let app = spawn_app(pool).await;
    let c = claims(&app);
    assert_401(&app, None, "no header").await;
    assert_401(&app, Some("Basic dXNlcjpwYXNz".into()), "basic").await;
    assert_401(&app, Some("Bearer".into()), "empty bearer").await;
    assert_401(&app, Some("Bearer not.a.jwt".into()), "garbage").await;

    // alg none, in several spellings, unsigned.
    for alg in ["none", "None", "NONE"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(c.to_string());
        assert_401(
            &app,
            Some(format!("Bearer {header}.{payload}.")),
            "alg none",
        )
        .await;
    }
    // Algorithm confusion: HS256 signed with the public key set, and RS256 naming the EC key.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = encode(&header, &c, &EncodingKey::from_secret(JWKS.as_bytes())).unwrap();
    assert_401(
        &app,
        Some(format!("Bearer {confused}")),
        "hs256 with public key",
    )
    .await;
    assert_401(
        &app,
        Some(format!(
            "Bearer {}",
            sign(Algorithm::RS256, Some("ec-1"), &c)
        )),
        "rs256 on ec key",
    )
    .await;
    assert_401(
        &app,
        Some(format!(
            "Bearer {}",
            sign(Algorithm::RS256, Some("nope"), &c)
        )),
        "unknown kid",
    )
    .await;

    // A signature that does not match.
    let good = rs256(&c);
    let (head, sig) = good.rsplit_once('.').unwrap();
    let tampered_payload =
        URL_SAFE_NO_PAD.encode(with(c.clone(), json!({"scope": "oath:jobs:write"})).to_string());
    let head = head.split('.').next().unwrap();
    assert_401(
        &app,
        Some(format!("Bearer {head}.{tampered_payload}.{sig}")),
        "tampered",
    )
    .await;

    // Claims.
    let cases = [
        (json!({"exp": now() - 120}), "expired"),
        (json!({"nbf": now() + 300}), "not yet valid"),
        (json!({"iss": "https://evil.example"}), "wrong issuer"),
        (json!({"aud": "someone-else"}), "wrong audience"),
        (json!({"exp": null}), "no exp"),
        (json!({"iss": null}), "no iss"),
        (json!({"aud": null}), "no aud"),
        (json!({"env": null}), "no env"),
        (json!({"env": "not-a-uuid"}), "env not a uuid"),
    ];
    for (patch, case) in cases {
        assert_401(
            &app,
            Some(format!("Bearer {}", rs256(&with(c.clone(), patch)))),
            case,
        )
        .await;
    }
}

#[sqlx::test]
async fn hs256_is_refused_when_no_secret_is_configured(pool: PgPool) {
    let app = spawn_app(pool).await;
    let strict = spawn_app_with(app.pool.clone(), |s| s.auth.hs256_secret = None).await;
    // Validly signed with the secret the other app knows.
    let token = app.token_for(strict.env, &Scope::ALL);
    let (status, _, _) = list_with(&strict, Some(format!("Bearer {token}"))).await;
    assert_eq!(status, 401);
    // The same app still takes asymmetric tokens.
    let (status, _, _) =
        list_with(&strict, Some(format!("Bearer {}", rs256(&claims(&strict))))).await;
    assert_eq!(status, 200);
}

#[sqlx::test]
async fn another_environments_token_is_403(pool: PgPool) {
    let app = spawn_app(pool).await;
    let foreign = app.token_for(Uuid::new_v4(), &Scope::ALL);
    let res = send(app.request_as(&foreign, Method::GET, &app.tokens_path())).await;
    expect_error(res, 403, "ACCESS_FAILED").await;
    let res = send(
        app.request_as(&foreign, Method::POST, &app.tokens_path())
            .json(&seed_token()),
    )
    .await;
    assert_eq!(res.status(), 403);
    let count = app.count("select count(*) from oath_tokens").await;
    assert_eq!(count, 0);
}

/// Verified tokens are cached (`auth.token_cache_size`), but never past their `exp`, and the
/// scope and environment of a cached token are still checked on every request.
#[sqlx::test]
async fn a_cached_token_is_refused_once_expired(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.auth.leeway_seconds = 0).await;
    // Two seconds ahead: the first requests must come before exp to be cached.
    let exp = now() + 2;
    let token = rs256(&with(claims(&app), json!({"exp": exp})));
    let bearer = Some(format!("Bearer {token}"));
    for _ in 0..3 {
        let (status, body, _) = list_with(&app, bearer.clone()).await;
        assert_eq!(status, 200, "{body}");
    }
    let elsewhere = format!("/v1/environments/{}/oathTokens", Uuid::new_v4());
    let res = app
        .client
        .get(app.url(&elsewhere))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, body) = parts(res).await;
    assert_error(status, &body, 403, "ACCESS_FAILED");
    let res = app
        .client
        .get(app.url(&app.jobs_path()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, body) = parts(res).await;
    assert_error(status, &body, 403, "ACCESS_FAILED");

    while now() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_401(&app, bearer, "expired after being cached").await;
}

#[sqlx::test]
async fn each_route_requires_its_scope(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (_, created) = parts(app.create_token(&seed_token()).await).await;
    let one = format!("{}/{}", app.tokens_path(), created["id"].as_str().unwrap());
    let missing = format!("{}/{}", app.tokens_path(), Uuid::new_v4());
    let routes = [
        (Method::GET, app.tokens_path(), Scope::TokensRead),
        (Method::GET, one.clone(), Scope::TokensRead),
        (Method::GET, missing.clone(), Scope::TokensRead),
        (Method::POST, app.tokens_path(), Scope::TokensWrite),
        (Method::DELETE, one.clone(), Scope::TokensWrite),
        (Method::DELETE, missing.clone(), Scope::TokensWrite),
        (
            Method::GET,
            "/v1/environments/not-a-uuid/oathTokens".into(),
            Scope::TokensRead,
        ),
    ];
    for (method, path, needed) in routes {
        let others: Vec<Scope> = Scope::ALL.into_iter().filter(|s| *s != needed).collect();
        let res = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(app.token(&others))
            .json(&seed_token())
            .send()
            .await
            .unwrap();
        let (status, body) = parts(res).await;
        // 403 whether or not the resource exists.
        assert_error_mentions(status, &body, 403, "ACCESS_FAILED", needed.as_str());
    }
    // The token survived every refused delete.
    assert_eq!(app.get_path(&one).await.status(), 200);
}
