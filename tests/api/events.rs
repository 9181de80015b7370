//! Events: the outbox written with each change, the activity feed that shows it, and what a
//! subscriber that applies every event ends up with.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use oath_service::auth::Scope;
use oath_service::domain::HashAlgorithm;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::{Connection as _, PgPool};
use uuid::Uuid;

use crate::support::app::{
    call, create_job, environment_path, hotp_token, numbered, rfc_code, spawn_app, spawn_app_with,
    TestApp,
};

/// Waits until every event written so far is visible to readers (no older transaction runs).
pub async fn settle(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hidden = app
            .count("select count(*) from events where xid >= (select events_horizon())")
            .await;
        if hidden == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "events stayed hidden");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the feed from `cursor` (an href's query, or none) to its end, `limit` a page; returns
/// the events and the last `next` href.
pub async fn read_feed(app: &TestApp, from: Option<String>, limit: u32) -> (Vec<Value>, String) {
    let mut href = from.unwrap_or_else(|| {
        format!(
            "{}{}?limit={limit}",
            crate::support::app::BASE_URL,
            environment_path(app.env, "/activities")
        )
    });
    let mut events = Vec::new();
    loop {
        let path = href.strip_prefix(crate::support::app::BASE_URL).unwrap();
        let (status, page) = app.get_json(path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["_embedded"]["activities"].as_array().unwrap().clone();
        assert_eq!(page["size"], items.len());
        let next = page["_links"]["next"]["href"]
            .as_str()
            .expect("every page links next")
            .to_string();
        let done = items.is_empty();
        events.extend(items);
        if done {
            return (events, next);
        }
        href = next;
    }
}

/// The token ids a subscriber holds after applying `events` in order.
fn apply(events: &[Value]) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    for e in events {
        let id = e["resource"]["id"].as_str().unwrap().to_string();
        match e["type"].as_str().unwrap() {
            "OATH_TOKEN.CREATED" => assert!(held.insert(id), "created twice: {e}"),
            "OATH_TOKEN.DELETED" => assert!(held.remove(&id), "deleted unknown: {e}"),
            t if t.starts_with("OATH_TOKEN.") => assert!(held.contains(&id), "{t} of unknown: {e}"),
            _ => {}
        }
    }
    held
}

async fn service_tokens(app: &TestApp) -> BTreeSet<String> {
    sqlx::query_scalar::<_, Uuid>("select id from oath_tokens where environment_id = $1")
        .bind(app.env)
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[sqlx::test]
async fn a_subscriber_that_applies_every_event_holds_the_service_tokens(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.limits.tokens_per_environment = 40;
        s.jobs.chunk_size = 7;
        s.otp.max_failures = 2;
    })
    .await;
    // Single creates, at once (combined into shared transactions), and one with a key.
    let creates = numbered("S", 0..8).map(|serial| {
        let app = &app;
        async move { app.create_token_id(&hotp_token(&serial)).await }
    });
    let singles = futures_util::future::join_all(creates).await;
    let keyed = app
        .request(Method::POST, &app.tokens_path())
        .header("idempotency-key", "k1")
        .json(&hotp_token("KEYED"));
    let (status, keyed) = call(keyed).await;
    assert_eq!(status, 201, "{keyed}");
    // A duplicate serial and a create past the quota roll back: no event.
    let before = app.count("select count(*) from events").await;
    let (status, _) = call(
        app.request(Method::POST, &app.tokens_path())
            .json(&hotp_token("S0")),
    )
    .await;
    assert_eq!(status, 400);
    // Deletes, a job that creates (with a repeated serial), a job that revokes.
    assert_eq!(
        app.delete(&format!("{}/{}", app.tokens_path(), singles[0]))
            .await
            .status(),
        204
    );
    let mut serials: Vec<String> = numbered("J", 0..20).collect();
    serials.push("S1".into());
    serials.push("J3".into());
    let job = app.submit_and_run(&create_job(serials)).await;
    assert_eq!(job["result"]["created"], 20, "{job}");
    let held_now = service_tokens(&app).await;
    assert_eq!(held_now.len(), 8 + 1 - 1 + 20);
    let room = 40 - held_now.len();
    let over = app
        .submit_and_run(&create_job(numbered("Q", 0..room + 3)))
        .await;
    assert_eq!(over["result"]["failed"], 3, "{over}");
    let (status, _) = call(
        app.request(Method::POST, &app.tokens_path())
            .json(&hotp_token("OVER")),
    )
    .await;
    assert_eq!(status, 400, "past the quota");
    let all: Vec<String> = service_tokens(&app).await.into_iter().collect();
    let revoke: Vec<&String> = all.iter().step_by(3).collect();
    let revoke_job = app
        .submit_and_run(&json!({"type": "REVOKE_OATH_TOKENS", "tokenIds": revoke}))
        .await;
    assert_eq!(
        revoke_job["result"]["revoked"],
        revoke.len(),
        "{revoke_job}"
    );
    // Lock one (two failures), unlock it, disable and enable another.
    let remaining = service_tokens(&app).await;
    let victim = format!("{}/{}", app.tokens_path(), remaining.first().unwrap());
    for _ in 0..3 {
        let (status, _) = app
            .post_json(&format!("{victim}/validate"), &json!({"otp": "000000"}))
            .await;
        assert_eq!(status, 200);
    }
    let (status, _) = app.post_json(&format!("{victim}/unlock"), &json!({})).await;
    assert_eq!(status, 200);
    let valid = rfc_code(HashAlgorithm::Sha1, 6, 0);
    let (status, body) = app
        .post_json(&format!("{victim}/validate"), &json!({"otp": valid}))
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("VALID")));
    for enabled in [false, false, true] {
        let (status, _) = call(
            app.request(Method::PATCH, &victim)
                .header("content-type", "application/json")
                .body(json!({"enabled": enabled}).to_string()),
        )
        .await;
        assert_eq!(status, 200);
    }

    settle(&app).await;
    let (events, next) = read_feed(&app, None, 7).await;
    let held = apply(&events);
    assert_eq!(held, service_tokens(&app).await, "the subscriber's view");
    assert!(before > 0);

    // What each kind of change wrote, and only once.
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
    let count = |t: &str| types(&events).iter().filter(|x| **x == t).count();
    assert_eq!(
        count("OATH_TOKEN.LOCKED"),
        1,
        "one lock, however many failures"
    );
    assert_eq!(count("OATH_TOKEN.UNLOCKED"), 1);
    assert_eq!(
        count("OATH_TOKEN.DISABLED"),
        1,
        "disabling twice is one change"
    );
    assert_eq!(count("OATH_TOKEN.ENABLED"), 1);
    assert_eq!(count("OATH_JOB.CREATED"), 3);
    assert_eq!(count("OATH_JOB.COMPLETED"), 3);
    let completed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "OATH_JOB.COMPLETED")
        .collect();
    assert_eq!(
        completed[0]["resource"]["result"],
        json!({"created": 20, "duplicatesCount": 2})
    );
    assert_eq!(completed[0]["resource"]["type"], "OATH_JOB");
    assert!(completed[0].get("job").is_none());
    let from_job: Vec<&Value> = events
        .iter()
        .filter(|e| e["job"]["id"] == job["id"])
        .collect();
    assert_eq!(from_job.len(), 20, "one event per token the job created");
    for e in &events {
        assert_eq!(e["actor"]["sub"], "dev", "{e}");
        assert_eq!(e["environment"]["id"], app.env.to_string());
        assert!(e["occurredAt"].as_str().unwrap().ends_with('Z'));
        if e["type"].as_str().unwrap().starts_with("OATH_TOKEN.") {
            assert!(e["resource"]["serialNumber"].is_string(), "{e}");
        }
    }
    let keyed_event = events
        .iter()
        .find(|e| e["resource"]["id"] == keyed["id"])
        .unwrap();
    assert!(keyed_event["requestId"].is_string(), "{keyed_event}");
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        !text.contains(crate::support::app::RFC_SECRET_HEX),
        "no secret in any event"
    );

    // The cursor: a later event is seen exactly once.
    let id = app.create_token_id(&hotp_token("LATER")).await;
    settle(&app).await;
    // The feed's horizon is computed anew for each read: a transaction of another database that
    // began meanwhile can hold it back for a moment (events_horizon tells other databases'
    // transactions apart by pg_stat_activity, which may not show a new one yet).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (later, next) = loop {
        let (later, next_now) = read_feed(&app, Some(next.clone()), 100).await;
        if !later.is_empty() || Instant::now() > deadline {
            break (later, next_now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(types(&later), ["OATH_TOKEN.CREATED"]);
    assert_eq!(later[0]["resource"]["id"], id);
    let (again, _) = read_feed(&app, Some(next), 100).await;
    assert!(again.is_empty(), "{again:?}");
}

#[sqlx::test]
async fn the_feed_filters_pages_and_keeps_environments_apart(pool: PgPool) {
    let app = spawn_app(pool).await;
    let a = app.create_token_id(&hotp_token("A1")).await;
    app.create_token_id(&hotp_token("A2")).await;
    assert_eq!(
        app.delete(&format!("{}/{a}", app.tokens_path()))
            .await
            .status(),
        204
    );
    settle(&app).await;
    let feed = environment_path(app.env, "/activities");
    let (status, page) = app
        .get_json(&format!("{feed}?filter=resource.id%20eq%20%22{a}%22"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        types(page["_embedded"]["activities"].as_array().unwrap()),
        ["OATH_TOKEN.CREATED", "OATH_TOKEN.DELETED"]
    );
    let (status, page) = app
        .get_json(&format!(
            "{feed}?filter=type%20eq%20%22OATH_TOKEN.DELETED%22"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["size"], 1);
    let (status, page) = app.get_json(&format!("{feed}?limit=1")).await;
    assert_eq!((status, page["size"].as_u64()), (200, Some(1)));
    // A token a job created: its event is one element of the chunk's row.
    let job = app.submit_and_run(&create_job(numbered("JF", 0..5))).await;
    settle(&app).await;
    let third: String = sqlx::query_scalar::<_, Uuid>(
        "select token_id from job_results where job_id = $1 and idx = 2",
    )
    .bind(Uuid::parse_str(job["id"].as_str().unwrap()).unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap()
    .to_string();
    let (status, page) = app
        .get_json(&format!("{feed}?filter=resource.id%20eq%20%22{third}%22"))
        .await;
    assert_eq!(status, 200, "{page}");
    let found = page["_embedded"]["activities"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{page}");
    assert_eq!(found[0]["resource"]["serialNumber"], "JF2");
    assert_eq!(found[0]["job"]["id"], job["id"]);
    // The same event, with the same id, in the unfiltered feed.
    let (all, _) = read_feed(&app, None, 2).await;
    assert!(all.iter().any(|e| e["id"] == found[0]["id"]));
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?cursor=nope",
        "?filter=type%20eq%20%22X%22",
    ] {
        let (status, body) = app.get_json(&format!("{feed}{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["code"], "INVALID_REQUEST");
    }
    // Another environment sees none of them; a caller of this one cannot read that one's.
    let other = Uuid::new_v4();
    let (status, page) = app.get_in(other, "/activities").await;
    assert_eq!(status, 200);
    assert_eq!(page["size"], 0);
    let (status, _) = call(app.request(Method::GET, &environment_path(other, "/activities"))).await;
    assert_eq!(status, 403);
    // The scope.
    let without = app.token(&[Scope::TokensRead, Scope::JobsRead]);
    let (status, body) = call(app.request_as(&without, Method::GET, &feed)).await;
    assert_eq!(status, 403, "{body}");
    let only = app.token(&[Scope::ActivitiesRead]);
    let (status, _) = call(app.request_as(&only, Method::GET, &feed)).await;
    assert_eq!(status, 200);
}

#[sqlx::test]
async fn a_rolled_back_change_emits_nothing(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.limits.tokens_per_environment = 1).await;
    app.create_token_id(&hotp_token("ONE")).await;
    let before = app.count("select count(*) from events").await;
    for serial in ["ONE", "TWO"] {
        let (status, body) = call(
            app.request(Method::POST, &app.tokens_path())
                .json(&hotp_token(serial)),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        let keyed = app
            .request(Method::POST, &app.tokens_path())
            .header("idempotency-key", serial)
            .json(&hotp_token(serial));
        let (status, body) = call(keyed).await;
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(app.count("select count(*) from events").await, before);
}

#[sqlx::test]
async fn an_event_that_commits_late_is_not_skipped_and_other_databases_hold_nothing_back(
    pool: PgPool,
) {
    let app = spawn_app(pool).await;
    app.create_token_id(&hotp_token("E0")).await;
    settle(&app).await;
    let (first, next) = read_feed(&app, None, 100).await;
    assert_eq!(first.len(), 1);

    // A slow writer takes its transaction id and writes its event first, and commits last.
    let mut slow = app.pool.begin().await.unwrap();
    let job = Uuid::now_v7();
    sqlx::query(
        "insert into events (environment_id, type, actor, resource_id) \
         values ($1, 'OATH_JOB.CREATED', 'slow', $2)",
    )
    .bind(app.env)
    .bind(job)
    .execute(&mut *slow)
    .await
    .unwrap();
    // A transaction of another database, open all along, holds nothing back.
    let other_db = (*app.pool.connect_options()).clone().database("postgres");
    let mut elsewhere = sqlx::postgres::PgConnection::connect_with(&other_db)
        .await
        .unwrap();
    let mut elsewhere_tx = elsewhere.begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *elsewhere_tx)
        .await
        .unwrap();
    let later = app.create_token_id(&hotp_token("E1")).await;
    // Hidden while the older transaction of this database runs: shown, it would be read before
    // the slow one's event, which a cursor would then skip.
    let (page, held) = read_feed(&app, Some(next.clone()), 100).await;
    assert!(page.is_empty(), "{page:?}");
    assert_eq!(held, next, "the position stays");
    slow.commit().await.unwrap();
    let (page, after) = read_feed(&app, Some(next), 100).await;
    let ids: Vec<&str> = page
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [job.to_string(), later], "both, in transaction order");
    let (page, _) = read_feed(&app, Some(after), 100).await;
    assert!(page.is_empty(), "each once: {page:?}");
    elsewhere_tx.rollback().await.unwrap();
}
