//! A transaction's `BEGIN` travels with its first statement (issue 15: `BEGIN` was a round
//! trip of its own in every transaction of every component — a consumer's batch, a relay's
//! pass, an intake writer's commit). What must not change: every statement of a transaction
//! runs inside it, in order, savepoints included; a transaction that ran nothing costs
//! nothing (`vendor/sqlx-postgres`, vendor/README.md row 14).

use sqlx::postgres::PgArguments;
use sqlx::{Acquire, Executor, PgPool, Postgres, Row};

use super::pool::pool_through_proxy;

async fn table(pool: &PgPool) {
    sqlx::query("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(pool)
        .await
        .unwrap();
}

fn insert(id: i32) -> sqlx::query::Query<'static, Postgres, PgArguments> {
    sqlx::query("INSERT INTO items VALUES ($1)").bind(id)
}

async fn ids(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar("SELECT id FROM items ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_transaction_costs_a_round_trip_per_statement_and_one_for_its_commit() {
    let (pool, proxy, _) = pool_through_proxy(1).await;
    table(&pool).await;
    let transaction = |id: i32| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            insert(id).execute(&mut *tx).await.unwrap();
            sqlx::query("SELECT count(*) FROM items")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    };
    // Prepared once: the statements are in the connection's cache from now on.
    transaction(0).await;
    let (round_trips, statements) = (proxy.counts.round_trips(), proxy.counts.statements());

    for id in 1..=20 {
        transaction(id).await;
    }

    assert_eq!(
        proxy.counts.statements() - statements,
        20 * 4,
        "BEGIN, two statements and COMMIT each time, all sent"
    );
    // Unpatched: BEGIN, INSERT, SELECT, COMMIT — four (80).
    assert_eq!(
        proxy.counts.round_trips() - round_trips,
        20 * 3,
        "BEGIN goes with the INSERT: three round trips per transaction"
    );
    assert_eq!(ids(&pool).await, (0..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_first_statement_runs_inside_its_transaction_prepared_or_not() {
    let (pool, _proxy, _) = pool_through_proxy(1).await;
    table(&pool).await;
    // First use on this connection (prepared in a round trip of its own, BEGIN before it),
    // then from the statement cache (BEGIN in the same round trip): both rolled back.
    for id in [1, 2] {
        let mut tx = pool.begin().await.unwrap();
        insert(id).execute(&mut *tx).await.unwrap();
        tx.rollback().await.unwrap();
    }
    // A simple-protocol statement first: `SET LOCAL` only lasts inside a transaction.
    let mut tx = pool.begin().await.unwrap();
    (&mut *tx)
        .execute("SET LOCAL statement_timeout = 4321")
        .await
        .unwrap();
    let inside: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let after: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&pool)
        .await
        .unwrap();

    assert_eq!(ids(&pool).await, Vec::<i32>::new(), "nothing committed");
    assert_eq!(inside, "4321ms", "SET LOCAL ran in the transaction");
    assert_eq!(after, "0", "and ended with it");
}

#[tokio::test]
async fn a_failing_first_statement_aborts_its_transaction_and_leaves_the_connection_usable() {
    let (pool, _proxy, _) = pool_through_proxy(1).await;
    table(&pool).await;
    sqlx::query("INSERT INTO items VALUES (1)")
        .execute(&pool)
        .await
        .unwrap();

    let mut tx = pool.begin().await.unwrap();
    let duplicate = insert(1).execute(&mut *tx).await;
    assert!(duplicate.is_err(), "the primary key refuses it");
    let aborted = insert(2).execute(&mut *tx).await.expect_err("aborted");
    assert!(
        aborted
            .to_string()
            .contains("current transaction is aborted"),
        "the failure was inside the transaction: {aborted}"
    );
    drop(tx);

    insert(3).execute(&pool).await.unwrap();
    assert_eq!(ids(&pool).await, [1, 3]);
}

#[tokio::test]
async fn a_transaction_that_ran_nothing_costs_no_round_trip() {
    let (pool, proxy, direct_url) = pool_through_proxy(1).await;
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();
    let round_trips = proxy.counts.round_trips();

    pool.begin().await.unwrap().commit().await.unwrap();
    pool.begin().await.unwrap().rollback().await.unwrap();
    drop(pool.begin().await.unwrap());

    assert_eq!(proxy.counts.round_trips() - round_trips, 0);
    // The next statement runs on its own: no BEGIN left over to open a transaction with it.
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let observer = PgPool::connect(&direct_url).await.unwrap();
    let state: String = sqlx::query("SELECT state FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(&observer)
        .await
        .unwrap()
        .get("state");
    assert_eq!(state, "idle", "not idle in transaction");
}

#[tokio::test]
async fn a_savepoint_opened_first_comes_after_its_begin() {
    let (pool, _proxy, _) = pool_through_proxy(1).await;
    table(&pool).await;
    let mut tx = pool.begin().await.unwrap();
    let mut savepoint = tx.begin().await.unwrap();
    sqlx::query("INSERT INTO items VALUES (1)")
        .execute(&mut *savepoint)
        .await
        .unwrap();
    savepoint.rollback().await.unwrap();
    sqlx::query("INSERT INTO items VALUES (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids(&pool).await, [2]);
}
