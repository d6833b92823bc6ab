//! The connection pool every component uses (`sagaflow_runtime::db`): a checkout costs no
//! round trip of its own while the connection is in use, a connection that sat idle is still
//! checked before it is handed out, and a transaction dropped half-way never keeps its locks
//! while its connection waits in the pool (issue 15: the pool pinged on every checkout and
//! every return — two round trips that ran nothing, per transaction).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};

use sagaflow_runtime::db::{self, PING_WHEN_IDLE_FOR};
use sagaflow_tests::pg_wire::CountingProxy;
use sagaflow_tests::{database, wait};

/// A pool of `size` connections to a fresh database, through a proxy that counts what the
/// pool sends.
pub(crate) async fn pool_through_proxy(size: u32) -> (PgPool, CountingProxy, String) {
    let test_db = database("order").await;
    let options: PgConnectOptions = test_db.url.parse().expect("test database URL");
    let server: SocketAddr = (options.get_host(), options.get_port())
        .to_socket_addrs()
        .expect("the test PostgreSQL is reached over TCP")
        .next()
        .expect("an address");
    let proxy = CountingProxy::start(server).await;
    // Plain text, so the proxy can read the protocol.
    let url = options
        .host(&proxy.address.ip().to_string())
        .port(proxy.address.port())
        .ssl_mode(sqlx::postgres::PgSslMode::Disable)
        .to_url_lossy()
        .to_string();
    let pool = db::connect(&url, size)
        .await
        .expect("pool through the proxy");
    (pool, proxy, test_db.url)
}

#[tokio::test]
async fn a_connection_in_use_is_handed_out_and_taken_back_without_a_round_trip() {
    let (pool, proxy, _) = pool_through_proxy(1).await;
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();
    let (syncs, statements) = (proxy.counts.bare_syncs(), proxy.counts.statements());

    for _ in 0..20 {
        sqlx::query("SELECT 1").execute(&pool).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT 2").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }

    assert_eq!(
        proxy.counts.statements() - statements,
        20 * 4,
        "each iteration: a statement, and BEGIN, a statement, COMMIT"
    );
    // Unpatched sqlx: a ping before each of the 40 checkouts and after each return (80).
    assert_eq!(
        proxy.counts.bare_syncs() - syncs,
        0,
        "no ping on checkout or return while the connection is in use"
    );
}

/// Waiting is what is under test here: the pool checks only connections idle this long.
async fn let_the_pool_sit_idle() {
    tokio::time::sleep(PING_WHEN_IDLE_FOR + Duration::from_millis(200)).await;
}

async fn backend_pid(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
}

/// End a server process, as a restart or a network cut would, and wait until it is gone.
async fn terminate(direct_url: &str, pid: i32) {
    let admin = db::connect(direct_url, 1).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&admin)
        .await
        .unwrap();
    wait::until("the backend to end", Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            let alive: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                    .bind(pid)
                    .fetch_one(&admin)
                    .await
                    .unwrap();
            (!alive).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_connection_that_sat_idle_is_checked_and_a_dead_one_replaced() {
    let (pool, proxy, direct_url) = pool_through_proxy(1).await;
    let pid = backend_pid(&pool).await.unwrap();

    let_the_pool_sit_idle().await;
    let syncs = proxy.counts.bare_syncs();
    assert_eq!(
        backend_pid(&pool).await.unwrap(),
        pid,
        "the same connection"
    );
    assert_eq!(
        proxy.counts.bare_syncs() - syncs,
        1,
        "one ping before handing out a connection that sat idle"
    );

    // The server ends the pooled connection while it is idle (a restart, a proxy's timeout).
    terminate(&direct_url, pid).await;
    let_the_pool_sit_idle().await;

    let new_pid = backend_pid(&pool)
        .await
        .expect("the dead connection is found by the ping and replaced, not handed out");
    assert_ne!(new_pid, pid);
}

#[tokio::test]
async fn a_transaction_dropped_half_way_releases_its_locks_while_its_connection_is_pooled() {
    let (pool, _proxy, direct_url) = pool_through_proxy(1).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(15, 1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    // As when a request is cancelled or a handler fails: no commit, no rollback called.
    drop(tx);

    // Nothing uses the pool again: the rollback must reach the server on the return itself.
    let other = db::connect(&direct_url, 1).await.unwrap();
    wait::until(
        "the dropped transaction's lock to be released",
        Duration::from_secs(5),
        || {
            let other = other.clone();
            async move {
                let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(15, 1)")
                    .fetch_one(&other)
                    .await
                    .unwrap();
                taken.then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_query_abandoned_mid_flight_leaves_a_connection_that_answers_the_next_one_right() {
    let (pool, _proxy, _) = pool_through_proxy(1).await;
    let abandoned = tokio::time::timeout(
        Duration::from_millis(20),
        sqlx::query_scalar::<_, i32>("SELECT 7 FROM pg_sleep(0.3)").fetch_one(&pool),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the query was abandoned before its answer"
    );

    let answer: i32 = sqlx::query_scalar("SELECT 8")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(answer, 8, "not the abandoned query's answer");
}

#[tokio::test]
async fn a_connection_that_broke_in_use_is_closed_on_its_return_not_handed_out_again() {
    let (pool, _proxy, direct_url) = pool_through_proxy(1).await;
    let mut connection = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *connection)
        .await
        .unwrap();
    terminate(&direct_url, pid).await;

    let failed = sqlx::query("SELECT 1")
        .execute(&mut *connection)
        .await
        .expect_err("the server ended this connection");
    assert!(
        db::is_unavailable(&failed),
        "an outage, retried by its caller: {failed}"
    );
    drop(connection);

    // At once, well within PING_WHEN_IDLE_FOR: no checkout ping would catch it.
    let new_pid = backend_pid(&pool)
        .await
        .expect("a new connection, not the broken one");
    assert_ne!(new_pid, pid);
}
