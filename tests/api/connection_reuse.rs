//! The login path's connections, handed from request to request without the pool's test
//! (`database::reuse`): only after every statement completed. One whose request was dropped
//! mid-statement goes back to the pool, which tests it: the next request never meets what the
//! dropped one left behind.

use std::sync::Arc;
use std::time::Duration;

use oath_service::crypto::SecretCipher;
use oath_service::database::{Reuse, SessionAttrs};
use oath_service::domain::{HashAlgorithm, Otp};
use oath_service::events::Origin;
use oath_service::service::verification::{self, CheckOutcome};
use oath_service::service::Services;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{rfc_code, spawn_app, test_settings, wait_until};

async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_connection_is_handed_on_only_after_its_statements_completed(pool: PgPool) {
    let reuse = Reuse::new(pool.clone(), 0, SessionAttrs::Any);
    let mut held = reuse.acquire().await.unwrap();
    let first = backend_pid(&mut held).await;
    held.done();
    let mut held = reuse.acquire().await.unwrap();
    assert_eq!(backend_pid(&mut held).await, first, "handed on");

    // Dropped while its statement runs: the pool takes it back and tests it.
    let slow = sqlx::query("select pg_sleep(1)").execute(&mut *held);
    assert!(tokio::time::timeout(Duration::from_millis(200), slow)
        .await
        .is_err());
    drop(held);
    let mut held = reuse.acquire().await.unwrap();
    assert_ne!(backend_pid(&mut held).await, first, "not handed on");
    let answer: i32 = sqlx::query_scalar("select 41 + 1")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    assert_eq!(answer, 42);
    held.done();

    // Kept no longer than a moment: an idle service holds none of the pool's connections.
    tokio::time::sleep(oath_service::database::reuse::KEEP * 3).await;
    assert_eq!(
        pool.size() as usize,
        pool.num_idle(),
        "all back in the pool"
    );
}

async fn open_backends(pool: &PgPool, pids: &[i32]) -> usize {
    sqlx::query_scalar::<_, i64>("select count(*) from pg_stat_activity where pid = any($1)")
        .bind(pids)
        .fetch_one(pool)
        .await
        .unwrap() as usize
}

#[sqlx::test]
async fn each_thread_opens_connections_of_its_own_up_to_the_share_then_uses_the_pool(pool: PgPool) {
    let reuse = Arc::new(Reuse::new(pool.clone(), 2, SessionAttrs::Any));
    let (mut a, mut b, mut c) = (
        reuse.acquire().await.unwrap(),
        reuse.acquire().await.unwrap(),
        reuse.acquire().await.unwrap(),
    );
    assert!(a.is_own() && b.is_own(), "the share's two");
    assert!(!c.is_own(), "then the pool's");
    assert_eq!(pool.size(), 1, "only the third from the pool");
    let own = [backend_pid(&mut a).await, backend_pid(&mut b).await];
    assert_ne!(own[0], own[1]);
    backend_pid(&mut c).await;
    a.done();
    b.done();
    c.done();

    // Handed on to the next request of this thread, the most recently used first.
    let mut held = reuse.acquire().await.unwrap();
    assert!(held.is_own());
    assert_eq!(backend_pid(&mut held).await, own[1]);

    // Another thread is not handed this thread's: with the share taken, it uses the pool's.
    // (This runtime keeps running meanwhile: the pool connection it gets was opened here.)
    let other = reuse.clone();
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut held = other.acquire().await.unwrap();
            assert!(!held.is_own());
            assert!(!own.contains(&backend_pid(&mut held).await));
            held.done();
        });
    })
    .await
    .unwrap();

    // Dropped while its statement runs: closed, and another opened in its place.
    let slow = sqlx::query("select pg_sleep(1)").execute(&mut *held);
    assert!(tokio::time::timeout(Duration::from_millis(200), slow)
        .await
        .is_err());
    drop(held);
    wait_until(
        "the dropped connection closed",
        Duration::from_secs(10),
        async || open_backends(&pool, &own[1..]).await == 0,
    )
    .await;
    let mut held = reuse.acquire().await.unwrap();
    assert_eq!(backend_pid(&mut held).await, own[0], "the other one kept");
    held.done();
    let mut held = reuse.acquire().await.unwrap();
    assert_eq!(backend_pid(&mut held).await, own[0]);
    let mut new = reuse.acquire().await.unwrap();
    assert!(new.is_own(), "opened in the dropped one's place");
    let new_pid = backend_pid(&mut new).await;
    assert!(!own.contains(&new_pid));
    held.done();
    new.done();

    // Unused for a while: closed.
    wait_until(
        "the unused own connections closed",
        oath_service::database::reuse::OWN_IDLE * 2,
        async || open_backends(&pool, &[own[0], new_pid]).await == 0,
    )
    .await;
}

#[sqlx::test]
async fn a_check_dropped_while_it_waits_leaves_the_next_check_right(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let id: Uuid = app.create_hotp_tokens(["R1".to_string()]).await[0]
        .parse()
        .unwrap();
    let settings = Arc::new(test_settings());
    let (active, keys) = settings.crypto.decoded_keys().unwrap();
    let cipher = Arc::new(SecretCipher::new(active, &keys).unwrap());
    let services = Services::new(settings, pool.clone(), cipher);
    let code = |counter| Otp::parse(&rfc_code(HashAlgorithm::Sha1, 6, counter)).unwrap();
    let check = |counter| {
        let (services, env) = (&services, app.env);
        async move {
            verification::validate(services, env, id, &code(counter), &Origin::system())
                .await
                .unwrap()
                .outcome
        }
    };
    assert_eq!(check(0).await, CheckOutcome::Valid);

    // Another transaction holds the row: the next check waits in its statement, and is
    // dropped there.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("select 1 from oath_tokens where id = $1 for update")
        .bind(id)
        .execute(&mut *blocker)
        .await
        .unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), check(1))
        .await
        .is_err());
    blocker.rollback().await.unwrap();
    // The database still runs the dropped check's statement once the row is free: code 1 is
    // consumed all the same (the counter moves to 2).
    wait_until(
        "the dropped check's write",
        Duration::from_secs(10),
        async || {
            sqlx::query_scalar::<_, i64>("select counter from oath_tokens where id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
                == 2
        },
    )
    .await;

    // Each check after it is answered by its own statements.
    assert_eq!(check(1).await, CheckOutcome::Invalid);
    assert_eq!(check(2).await, CheckOutcome::Valid);
    assert_eq!(check(2).await, CheckOutcome::Invalid);
    assert_eq!(check(3).await, CheckOutcome::Valid);
}
