//! Tenancy swept over the route table: every method of every `/v1` route of `routes::ROUTES`,
//! called by environment B on A's path (403) and with A's ids on B's own path (404), after which
//! A's rows are exactly what they were. A route added later is swept without a change here; one
//! whose path names an id this file cannot fill fails the sweep until it learns to.

use oath_service::domain::HashAlgorithm;
use oath_service::routes::ROUTES;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{call, create_job, hotp_token, numbered, rfc_code, spawn_app, TestApp};

/// A's resources that B reaches for: the ids a path may name besides its environment.
struct Ids {
    token: Uuid,
    job: Uuid,
    subscription: Uuid,
}

/// `path` with `{env_id}` set to `env` and every other placeholder to A's id of its kind.
fn fill(path: &str, env: Uuid, ids: &Ids) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').expect("a closed placeholder");
        out.push_str(&rest[..open]);
        let value = match &rest[open + 1..close] {
            "env_id" => env,
            "token_id" => ids.token,
            "job_id" => ids.job,
            "subscription_id" => ids.subscription,
            other => panic!(
                "{path}: the tenancy sweep cannot fill {{{other}}}; teach `fill` (and `body_for`) \
                 which of environment A's resources it names"
            ),
        };
        out.push_str(&value.to_string());
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A request body valid for the operation at `path`, so that the answer is decided by tenancy,
/// not by a body refused first. A new operation with a body of its own gets `{}` here, and its
/// 404 check fails until it gets a body of its own.
fn body_for(method: &Method, path: &str) -> Option<(&'static str, String)> {
    let json = |v: Value| Some(("application/json", v.to_string()));
    if *method == Method::PATCH {
        // Disabling another environment's token would be the attack.
        return json(json!({"enabled": false}));
    }
    let subscription = || {
        json(json!({"name": "mallory",
                    "httpEndpoint": {"url": "https://hooks.example.test/mallory"}}))
    };
    if *method == Method::PUT {
        // Redirecting another environment's events would be the attack.
        return subscription();
    }
    if *method != Method::POST {
        return None;
    }
    match path.rsplit('/').next().unwrap() {
        "validate" => json(json!({"otp": "123456"})),
        "resync" => json(json!({"otps": ["123456", "654321"]})),
        "pairing" => json(json!({"userId": "mallory", "otp": "123456"})),
        "oathTokens" => json(hotp_token("BCROSS1")),
        "subscriptions" => subscription(),
        "oathJobs" => Some((
            oath_service::domain::job::JobType::CREATE_MEDIA_TYPE,
            create_job(numbered("BCROSSJ", 0..2)).to_string(),
        )),
        _ => json(json!({})),
    }
}

/// Every row of environment `env` in every tenant table, as JSON text, in a stable order.
async fn dump(pool: &PgPool, env: Uuid) -> Value {
    let mut all = serde_json::Map::new();
    for (table, order) in [
        ("oath_tokens", "id"),
        ("oath_jobs", "id"),
        ("oath_job_chunks", "job_id, first_idx"),
        ("job_result_chunks", "job_id, first_idx"),
        ("environment_usage", "environment_id"),
        ("environment_schedule", "environment_id"),
        ("idempotency_keys", "key"),
        ("subscriptions", "id"),
        ("events", "xid, seq"),
    ] {
        let sql = format!(
            "select coalesce(json_agg(t order by {order}), '[]'::json)::text \
             from {table} t where environment_id = $1"
        );
        let text: String = sqlx::query_scalar(&sql)
            .bind(env)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        all.insert(table.into(), serde_json::from_str(&text).unwrap());
    }
    Value::Object(all)
}

/// Environment A with a paired token whose counter moved, a token with a failed check, and a
/// finished job; returns the ids B will name.
async fn populate_a(app: &TestApp) -> Ids {
    let tokens = app.tokens_path();
    let paired = app.create_token_id(&hotp_token("APAIRED")).await;
    let (status, body) = app
        .post_json(
            &format!("{tokens}/{paired}/pairing"),
            &json!({"userId": "alice", "otp": rfc_code(HashAlgorithm::Sha1, 6, 0)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let failing = app.create_token_id(&hotp_token("AFAILING")).await;
    let (status, body) = app
        .post_json(
            &format!("{tokens}/{failing}/validate"),
            &json!({"otp": "000000"}),
        )
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("INVALID")));
    let job = app.submit(&create_job(numbered("AJOB", 0..3))).await;
    app.run_jobs().await;
    let (status, subscription) = app
        .post_json(
            &crate::support::app::environment_path(app.env, "/subscriptions"),
            &json!({"name": "a", "httpEndpoint": {"url": "https://hooks.example.test/a"}}),
        )
        .await;
    assert_eq!(status, 201, "{subscription}");
    Ids {
        token: paired.parse().unwrap(),
        job: job["id"].as_str().unwrap().parse().unwrap(),
        subscription: subscription["id"].as_str().unwrap().parse().unwrap(),
    }
}

#[sqlx::test]
async fn no_route_lets_one_environment_reach_another(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (a, b) = (app.env, Uuid::new_v4());
    let ids = populate_a(&app).await;
    app.assert_counts_in(
        a,
        &[
            (
                "select count(*) from oath_tokens where environment_id = $1 and status = 'PAIRED'",
                1,
            ),
            (
                "select count(*) from oath_tokens where environment_id = $1 and fail_count > 0",
                1,
            ),
            (
                "select count(*) from oath_tokens where environment_id = $1",
                5,
            ),
        ],
    )
    .await;
    let before = dump(&app.pool, a).await;

    let mut swept = Vec::new();
    for resource in ROUTES {
        for template in resource.paths.iter().filter(|p| p.starts_with("/v1/")) {
            for (method, _) in resource.methods {
                let method = Method::from_bytes(method.as_str().as_bytes()).unwrap();
                let ask = |env: Uuid| {
                    let path = fill(template, env, &ids);
                    let mut request = app.request_in(b, method.clone(), &path);
                    if let Some((media_type, body)) = body_for(&method, template) {
                        request = request.header("content-type", media_type).body(body);
                    }
                    (path, request)
                };
                // B's token, every scope, on A's path.
                let (path, request) = ask(a);
                let (status, body) = call(request).await;
                assert_eq!(status, 403, "{method} {path} as B: {body}");
                assert_eq!(body["code"], "ACCESS_FAILED", "{method} {path}: {body}");
                // A's ids on B's own path: nothing of A's is found there.
                if template.matches('{').count() > 1 {
                    let (path, request) = ask(b);
                    let (status, body) = call(request).await;
                    assert_eq!(status, 404, "{method} {path} as B: {body}");
                    assert_eq!(body["code"], "NOT_FOUND", "{method} {path}: {body}");
                }
                swept.push(format!("{method} {template}"));
            }
        }
    }
    // The sweep covers the API, whatever the table holds: every /v1 operation, aliases included.
    assert!(swept.len() >= 14, "{swept:#?}");
    assert!(
        swept.contains(&"DELETE /v1/environments/{env_id}/oathTokens/{token_id}/pairing".into()),
        "{swept:#?}"
    );

    let after = dump(&app.pool, a).await;
    assert_eq!(before, after, "A's rows changed");
    // Nothing of B's requests on A's path was written anywhere; B's own 404s wrote nothing.
    assert_eq!(dump(&app.pool, b).await, dump(&app.pool, Uuid::nil()).await);
}

#[test]
fn a_placeholder_the_sweep_does_not_know_fails_it() {
    let ids = Ids {
        token: Uuid::nil(),
        job: Uuid::nil(),
        subscription: Uuid::nil(),
    };
    let env = Uuid::new_v4();
    assert_eq!(
        fill(
            "/v1/environments/{env_id}/oathJobs/{job_id}/results",
            env,
            &ids
        ),
        format!("/v1/environments/{env}/oathJobs/{}/results", Uuid::nil())
    );
    let unknown =
        std::panic::catch_unwind(|| fill("/v1/environments/{env_id}/users/{user_id}", env, &ids));
    assert!(unknown.is_err());
}
