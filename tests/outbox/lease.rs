//! Leases (issue 15, `migrations/messaging/0011_outbox_lease.sql`): a pass claims its heads
//! with a lease instead of row locks held across the send, so that the claim, and the marks of
//! the pass before, are one statement. A leased row must stay its relay's while that relay is
//! connected and within its lease — another relay publishing it would be a duplicate, and could
//! run ahead of it on its key — and must come free at once when the relay disconnects (dies),
//! as row locks did, not only when the lease runs out.

use std::time::Duration;

use sagaflow_messaging::Relay;
use sagaflow_tests::{broker_lock, wait};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::{relay, row_state, setup, write};

/// Lease the row with this message id as a relay on `holder` would: for `seconds` from now, to
/// `holder`'s backend.
async fn lease_to(pool: &PgPool, holder: &mut PgConnection, message_id: Uuid, seconds: f64) {
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE outbox SET leased_by = $2,
                leased_until = clock_timestamp() + make_interval(secs => $3)
          WHERE message_id = $1",
    )
    .bind(message_id)
    .bind(pid)
    .bind(seconds)
    .execute(pool)
    .await
    .unwrap();
}

/// Run passes of `relay` until the row with this message id is published.
async fn publish_until(relay: &Relay, pool: &PgPool, message_id: Uuid, what: &str) {
    wait::until(what, Duration::from_secs(10), || async {
        relay.publish_once().await.unwrap();
        row_state(pool, message_id).await.0.then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_leased_head_is_left_alone_until_its_relay_disconnects() {
    let _broker = broker_lock().read().await;
    let (pool, config) = setup().await;
    let order = Uuid::now_v7();
    let first = write(&pool, order, 0).await;
    let second = write(&pool, order, 1).await;
    let other = write(&pool, Uuid::now_v7(), 0).await;
    let mut holder = PgConnection::connect_with(&pool.connect_options())
        .await
        .unwrap();
    lease_to(&pool, &mut holder, first, 60.0).await;

    let relay = relay(&pool, &config);
    assert_eq!(
        relay.drain().await.unwrap(),
        1,
        "only the other key's row: the key's head is leased, its next row waits behind it"
    );
    assert!(
        row_state(&pool, other).await.0,
        "the other key is published"
    );
    assert_eq!(row_state(&pool, first).await, (false, false, 0));
    assert_eq!(row_state(&pool, second).await, (false, false, 0));

    // The holder dies: its lease lapses with its connection, 60 s early.
    holder.close().await.unwrap();
    publish_until(
        &relay,
        &pool,
        first,
        "the head, once its holder disconnected",
    )
    .await;
    publish_until(&relay, &pool, second, "the key's next row, after its head").await;
}

#[tokio::test]
async fn a_lease_that_ran_out_is_taken_over_though_its_relay_is_still_connected() {
    let _broker = broker_lock().read().await;
    let (pool, config) = setup().await;
    let row = write(&pool, Uuid::now_v7(), 0).await;
    let mut holder = PgConnection::connect_with(&pool.connect_options())
        .await
        .unwrap();
    lease_to(&pool, &mut holder, row, 1.0).await;
    let relay = relay(&pool, &config);
    assert_eq!(relay.publish_once().await.unwrap(), 0, "leased for 1 s");
    // A relay hung while connected holds its rows only until the lease ends.
    publish_until(&relay, &pool, row, "the row, once its lease ran out").await;
    holder.close().await.unwrap();
}
