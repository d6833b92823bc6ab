//! The payment handler against PostgreSQL and the simulated provider (no Kafka: messages are
//! delivered the way the consumer does, inside a transaction that commits on success).
//!
//! Runs against the integration harness's PostgreSQL (`sagaflow_tests::infra()`: a
//! testcontainer, or `SAGAFLOW_TEST_DATABASE_URL`); each test creates its own database.

use std::time::Duration;

use payment_service::client::{
    Charge, ChargeOutcome, ChargeRequest, ClientSettings, ProviderClient, charge_key,
};
use payment_service::provider::{ProviderControl, ProviderFaults, spawn_provider};
use payment_service::{MIGRATOR, PaymentHandler, PaymentStatus, store};
use sagaflow_messaging::consumer::{Handler, HandlerError, Incoming};
use sagaflow_schemas::{
    AuthorizePayment, Envelope, Message, PaymentAuthorized, PaymentDeclined, PaymentRefunded,
    RefundPayment, topics,
};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Env {
    pool: PgPool,
    handler: PaymentHandler,
    provider: ProviderControl,
    provider_url: String,
    admin_url: String,
    database: String,
    shutdown: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Env {
    async fn drop_database(self) {
        self.pool.close().await;
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.database
                )))
                .await;
        }
    }
}

/// A fresh database (on the integration harness's PostgreSQL: a testcontainer, or
/// `SAGAFLOW_TEST_DATABASE_URL`) and provider. Always `Some`.
async fn env(settings: impl FnOnce(ClientSettings) -> ClientSettings) -> Option<Env> {
    let admin_url = sagaflow_tests::infra().postgres_admin_url.clone();
    let database = format!("payment_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .expect("admin connection");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .await
        .expect("create database");
    let mut url = url_of(&admin_url);
    url.set_path(&database);
    let pool = sagaflow_runtime::db::connect(url.as_str(), 8)
        .await
        .expect("pool");
    MIGRATOR.run(&pool).await.expect("migrations");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider_url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let provider = spawn_provider(listener, ProviderFaults::default(), shutdown.clone()).await;
    let client = ProviderClient::new(settings(ClientSettings {
        base_url: provider_url.clone(),
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        circuit_open: Duration::from_secs(600),
        ..ClientSettings::default()
    }))
    .unwrap();
    Some(Env {
        handler: PaymentHandler::new(pool.clone(), client),
        pool,
        provider,
        provider_url,
        admin_url,
        database,
        shutdown,
    })
}

fn url_of(text: &str) -> reqwest::Url {
    reqwest::Url::parse(text).expect("SAGAFLOW_TEST_DATABASE_URL is a URL")
}

fn authorize(order_id: Uuid, payment_method: &str) -> Message {
    AuthorizePayment {
        order_id,
        customer_id: Uuid::from_u128(7),
        amount_cents: 4_200,
        currency: "EUR".into(),
        payment_method: payment_method.into(),
        charge_before: None,
    }
    .into()
}

fn refund(order_id: Uuid) -> Message {
    RefundPayment {
        order_id,
        reason: "compensation".into(),
    }
    .into()
}

/// Deliver as the consumer does: one transaction, committed only if the handler succeeded.
async fn deliver(env: &Env, message: Message) -> Result<(), HandlerError> {
    let order_id = message.order_id();
    let encoded = message.encode().unwrap();
    let incoming = Incoming {
        topic: topics::PAYMENT_COMMANDS.into(),
        partition: 0,
        offset: 0,
        key: Some(order_id.to_string()),
        envelope: Envelope::new(
            encoded.message_type,
            "saga-orchestrator",
            order_id,
            None,
            encoded.schema_ref,
        ),
        message,
    };
    assert!(env.handler.accepts(incoming.message.kind()));
    let mut tx = env.pool.begin().await?;
    env.handler.handle(&mut tx, &incoming).await?;
    tx.commit().await?;
    Ok(())
}

/// The replies of an order, in outbox order.
async fn replies(env: &Env, order_id: Uuid) -> Vec<Message> {
    let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT message_type, topic, payload FROM outbox WHERE msg_key = $1 ORDER BY id",
    )
    .bind(order_id.to_string())
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(message_type, topic, payload)| {
            assert_eq!(topic, topics::PAYMENT_EVENTS);
            Message::decode(&message_type, None, &payload).unwrap()
        })
        .collect()
}

async fn status(env: &Env, order_id: Uuid) -> Option<PaymentStatus> {
    store::find(&env.pool, order_id)
        .await
        .unwrap()
        .map(|row| row.status)
}

fn payment_id(message: &Message) -> String {
    match message {
        Message::PaymentAuthorized(m) => m.payment_id.clone(),
        other => panic!("expected PaymentAuthorized, got {other:?}"),
    }
}

#[tokio::test]
async fn authorize_charges_once_and_redeliveries_re_emit_the_outcome() {
    let Some(env) = env(|s| s).await else { return };
    let order = Uuid::now_v7();

    deliver(&env, authorize(order, "pm_card_visa"))
        .await
        .unwrap();
    deliver(&env, authorize(order, "pm_card_visa"))
        .await
        .unwrap();

    let replies = replies(&env, order).await;
    assert_eq!(replies.len(), 2);
    let charge = payment_id(&replies[0]);
    assert_eq!(
        replies[0], replies[1],
        "the recorded outcome is re-emitted as it was"
    );
    assert!(
        matches!(&replies[0], Message::PaymentAuthorized(PaymentAuthorized { amount_cents: 4_200, currency, .. }) if currency == "EUR")
    );
    let row = store::find(&env.pool, order).await.unwrap().unwrap();
    assert_eq!(row.status, PaymentStatus::Authorized);
    assert_eq!(row.charge_id, Some(charge));
    assert_eq!(env.provider.stats().charges, 1);

    // The HTTP API shows the row; an unknown order is a 404 Problem.
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sagaflow_runtime::http::serve(
        listener,
        // Behind authentication as in the service (open here: no secret), which names the
        // caller the handler checks ownership for.
        sagaflow_runtime::auth::protect(
            payment_service::router(env.pool.clone()),
            &sagaflow_runtime::auth::ApiSecurity::default(),
        ),
        shutdown.clone(),
    ));
    let shown: serde_json::Value = reqwest::get(format!("{base}/payments/{order}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "AUTHORIZED");
    assert_eq!(shown["amount_cents"], 4_200);
    let missing = reqwest::get(format!("{base}/payments/{}", Uuid::now_v7()))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let malformed = reqwest::get(format!("{base}/payments/not-a-uuid"))
        .await
        .unwrap();
    assert_eq!(malformed.status(), 422);
    shutdown.cancel();
    env.drop_database().await;
}

#[tokio::test]
async fn a_decline_is_recorded_and_its_refund_moves_no_money() {
    let Some(env) = env(|s| s).await else { return };
    let order = Uuid::now_v7();

    deliver(&env, authorize(order, "pm_card_chargeDeclined"))
        .await
        .unwrap();
    deliver(&env, refund(order)).await.unwrap();
    deliver(&env, authorize(order, "pm_card_chargeDeclined"))
        .await
        .unwrap();

    let replies = replies(&env, order).await;
    assert!(
        matches!(&replies[0], Message::PaymentDeclined(PaymentDeclined { reason, .. }) if reason == "card_declined")
    );
    assert!(
        matches!(&replies[1], Message::PaymentRefunded(PaymentRefunded { payment_id: None, amount_cents: 0, currency, .. }) if currency == "EUR")
    );
    assert_eq!(replies[2], replies[0]);
    assert_eq!(status(&env, order).await, Some(PaymentStatus::Declined));
    let stats = env.provider.stats();
    assert_eq!((stats.charges, stats.refunds, stats.declines), (0, 0, 1));
    env.drop_database().await;
}

#[tokio::test]
async fn a_refund_before_the_charge_cancels_and_the_late_charge_is_declined() {
    let Some(env) = env(|s| s).await else { return };
    let order = Uuid::now_v7();

    deliver(&env, refund(order)).await.unwrap();
    deliver(&env, authorize(order, "pm_card_visa"))
        .await
        .unwrap();
    deliver(&env, refund(order)).await.unwrap();

    let replies = replies(&env, order).await;
    assert!(
        matches!(&replies[0], Message::PaymentRefunded(PaymentRefunded { payment_id: None, amount_cents: 0, currency, .. }) if currency == "XXX")
    );
    assert!(
        matches!(&replies[1], Message::PaymentDeclined(PaymentDeclined { reason, .. }) if reason == "cancelled")
    );
    assert_eq!(replies[2], replies[0]);
    assert_eq!(status(&env, order).await, Some(PaymentStatus::Cancelled));
    assert_eq!(
        env.provider.stats().requests,
        0,
        "the provider was never called"
    );
    env.drop_database().await;
}

#[tokio::test]
async fn a_charge_is_refunded_once_and_never_charged_again() {
    let Some(env) = env(|s| s).await else { return };
    let order = Uuid::now_v7();

    deliver(&env, authorize(order, "pm_card_visa"))
        .await
        .unwrap();
    deliver(&env, refund(order)).await.unwrap();
    deliver(&env, refund(order)).await.unwrap();
    deliver(&env, authorize(order, "pm_card_visa"))
        .await
        .unwrap();

    let replies = replies(&env, order).await;
    let charge = payment_id(&replies[0]);
    let Message::PaymentRefunded(refunded) = &replies[1] else {
        panic!("expected PaymentRefunded, got {:?}", replies[1]);
    };
    assert_eq!(refunded.payment_id.as_deref(), Some(charge.as_str()));
    assert_eq!(
        (refunded.amount_cents, refunded.currency.as_str()),
        (4_200, "EUR")
    );
    assert_eq!(
        replies[2], replies[1],
        "the second refund re-emits the first"
    );
    assert!(
        matches!(&replies[3], Message::PaymentDeclined(PaymentDeclined { reason, .. }) if reason == "cancelled")
    );
    let row = store::find(&env.pool, order).await.unwrap().unwrap();
    assert_eq!(row.status, PaymentStatus::Refunded);
    assert!(row.refund_id.is_some());
    let stats = env.provider.stats();
    assert_eq!((stats.charges, stats.refunds), (1, 1));
    env.drop_database().await;
}

#[tokio::test]
async fn an_unavailable_provider_fails_the_message_and_changes_nothing() {
    let Some(env) = env(|s| s).await else { return };
    let order = Uuid::now_v7();
    env.provider.set_down(true);

    let error = deliver(&env, authorize(order, "pm_card_visa"))
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::Failed(_)), "{error:?}");
    assert_eq!(status(&env, order).await, None);
    assert!(replies(&env, order).await.is_empty());
    // A 503 is certain: nothing to reconcile, so the refund cancels without the provider.
    let uncertain: i64 = sqlx::query_scalar("SELECT count(*) FROM uncertain_charges")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(uncertain, 0);
    deliver(&env, refund(order)).await.unwrap();
    assert_eq!(status(&env, order).await, Some(PaymentStatus::Cancelled));
    env.drop_database().await;
}

/// While the circuit is open, a failed message says when the provider may be asked again, so
/// the consumer does not burn its attempts on refusals; asked then, the charge goes through.
#[tokio::test]
async fn an_open_circuit_tells_the_consumer_when_to_retry_and_then_the_charge_goes_through() {
    let Some(env) = env(|s| ClientSettings {
        circuit_failures: 3,
        circuit_open: Duration::from_millis(400),
        circuit_open_max: Duration::from_millis(400),
        ..s
    })
    .await
    else {
        return;
    };
    let order = Uuid::now_v7();
    env.provider.set_down(true);
    // Three failed attempts open the circuit.
    let error = deliver(&env, authorize(order, "pm_card_visa"))
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::Failed(_)), "{error:?}");
    let requests = env.provider.stats().requests;
    assert_eq!(requests, 3);

    env.provider.set_down(false);
    let error = deliver(&env, authorize(order, "pm_card_visa"))
        .await
        .unwrap_err();
    let HandlerError::Unavailable { retry_after, .. } = error else {
        panic!("an open circuit names when to retry: {error:?}");
    };
    // The period is 400 ms stretched by up to 50 %, minus the moments since it opened.
    assert!(
        retry_after > Duration::ZERO && retry_after <= Duration::from_millis(605),
        "{retry_after:?}"
    );
    assert_eq!(
        env.provider.stats().requests,
        requests,
        "refused without reaching the provider"
    );

    tokio::time::sleep(retry_after).await;
    deliver(&env, authorize(order, "pm_card_visa"))
        .await
        .expect("asked when told, the half-open probe reaches the provider");
    assert_eq!(status(&env, order).await, Some(PaymentStatus::Authorized));
    assert_eq!(env.provider.stats().charges, 1);
    env.drop_database().await;
}

/// An AuthorizePayment whose `charge_before` has passed.
fn expired(order_id: Uuid) -> Message {
    let Message::AuthorizePayment(mut command) = authorize(order_id, "pm_card_visa") else {
        unreachable!()
    };
    command.charge_before = Some(chrono::Utc::now().timestamp_millis() - 1_000);
    command.into()
}

/// An env whose provider calls give up after 100 ms, in one attempt: a slow provider's
/// answers are lost.
async fn env_losing_answers() -> Option<Env> {
    env(|s| ClientSettings {
        timeout: Duration::from_millis(100),
        max_attempts: 1,
        ..s
    })
    .await
}

/// Deliver an AuthorizePayment whose charge call times out while the provider, slowed to
/// `latency`, goes on to make the charge.
async fn lose_the_charge_answer(env: &Env, order: Uuid, latency: Duration) {
    env.provider.set_latency(latency);
    let error = deliver(env, authorize(order, "pm_card_visa"))
        .await
        .unwrap_err();
    assert!(matches!(error, HandlerError::Failed(_)), "{error:?}");
    env.provider.set_latency(Duration::ZERO);
}

/// Charge `order` at the provider directly, with the handler's idempotency key.
async fn charge_directly(env: &Env, order: Uuid) -> Charge {
    let direct = ProviderClient::new(ClientSettings {
        base_url: env.provider_url.clone(),
        ..ClientSettings::default()
    })
    .unwrap();
    let made = direct
        .charge(&ChargeRequest {
            amount: 4_200,
            currency: "EUR".into(),
            payment_method: "pm_card_visa".into(),
            idempotency_key: charge_key(order),
        })
        .await
        .unwrap();
    match made {
        ChargeOutcome::Charged(charge) => charge,
        other => panic!("expected a charge, got {other:?}"),
    }
}

/// Past its deadline a payment is declined without charging: the provider is only asked
/// whether a charge exists (it moves no money), and the compensation then refunds nothing.
#[tokio::test]
async fn an_expired_payment_is_declined_without_charging() {
    let Some(env) = env(|s| s).await else { return };
    let order = Uuid::now_v7();
    deliver(&env, expired(order)).await.unwrap();
    assert_eq!(status(&env, order).await, Some(PaymentStatus::Declined));
    let replies = replies(&env, order).await;
    assert!(
        matches!(replies.as_slice(), [Message::PaymentDeclined(PaymentDeclined { reason, .. })] if reason == "expired"),
        "{replies:?}"
    );
    let stats = env.provider.stats();
    assert_eq!(
        (stats.charges, stats.requests),
        (0, 1),
        "one lookup: {stats:?}"
    );
    deliver(&env, refund(order)).await.unwrap();
    assert_eq!(env.provider.stats().refunds, 0);
    env.drop_database().await;
}

/// A charge the provider made though its transaction rolled back (no payment row, no note)
/// is found when its command comes back expired, and recorded — not declined, which would
/// tell the compensation that nothing was charged.
#[tokio::test]
async fn an_expired_payment_whose_charge_exists_records_it_and_the_compensation_refunds_it() {
    let Some(env) = env(|s| s).await else { return };
    let order = Uuid::now_v7();
    let charge = charge_directly(&env, order).await;

    deliver(&env, expired(order)).await.unwrap();
    let row = store::find(&env.pool, order).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.charge_id.as_deref()),
        (PaymentStatus::Authorized, Some(charge.id.as_str()))
    );
    deliver(&env, refund(order)).await.unwrap();
    let stats = env.provider.stats();
    assert_eq!((stats.charges, stats.refunds), (1, 1), "{stats:?}");
    env.drop_database().await;
}

/// A charge whose outcome was lost (noted) is collected with its idempotency key even past
/// the deadline: the provider may be holding it.
#[tokio::test]
async fn an_expired_payment_with_a_lost_outcome_collects_the_charge() {
    let Some(env) = env_losing_answers().await else {
        return;
    };
    let order = Uuid::now_v7();
    lose_the_charge_answer(&env, order, Duration::from_secs(1)).await;
    deliver(&env, expired(order)).await.unwrap();
    assert_eq!(status(&env, order).await, Some(PaymentStatus::Authorized));
    assert_eq!(env.provider.stats().charges, 1, "the one charge, collected");
    env.drop_database().await;
}

#[tokio::test]
async fn a_charge_whose_answer_was_lost_is_found_and_refunded_by_the_compensation() {
    let Some(env) = env_losing_answers().await else {
        return;
    };
    let order = Uuid::now_v7();
    lose_the_charge_answer(&env, order, Duration::from_secs(3)).await;
    assert_eq!(status(&env, order).await, None);

    // The provider did take the money (the timed-out call went through): the same
    // idempotency key yields that one charge whichever request the provider saw first.
    let charge = charge_directly(&env, order).await;

    deliver(&env, refund(order)).await.unwrap();

    let replies = replies(&env, order).await;
    assert_eq!(
        replies.as_slice(),
        [Message::from(PaymentRefunded {
            order_id: order,
            payment_id: Some(charge.id.clone()),
            amount_cents: 4_200,
            currency: "EUR".into(),
            refunded_at: match &replies[0] {
                Message::PaymentRefunded(m) => m.refunded_at,
                other => panic!("expected PaymentRefunded, got {other:?}"),
            },
        })]
    );
    let row = store::find(&env.pool, order).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.charge_id.as_deref()),
        (PaymentStatus::Refunded, Some(charge.id.as_str()))
    );
    assert_eq!(env.provider.stats().refunds, 1);
    let uncertain: i64 = sqlx::query_scalar("SELECT count(*) FROM uncertain_charges")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(uncertain, 0, "the note is resolved");

    // The saga gave up: a late redelivery of the command is not charged.
    deliver(&env, authorize(order, "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(env.provider.stats().refunds, 1);
    env.drop_database().await;
}

#[tokio::test]
async fn concurrent_deliveries_for_one_order_charge_once() {
    let Some(env) = env(|s| s).await else { return };
    let order = Uuid::now_v7();
    // Slow charges keep the first delivery inside its transaction while the second arrives.
    env.provider.set_latency(Duration::from_millis(200));

    let (first, second) = tokio::join!(
        deliver(&env, authorize(order, "pm_card_visa")),
        deliver(&env, authorize(order, "pm_card_visa"))
    );
    first.unwrap();
    second.unwrap();

    let replies = replies(&env, order).await;
    assert_eq!(replies.len(), 2);
    assert_eq!(payment_id(&replies[0]), payment_id(&replies[1]));
    assert_eq!(env.provider.stats().charges, 1);
    assert_eq!(
        env.provider.stats().requests,
        1,
        "the second delivery waited and did not call"
    );
    env.drop_database().await;
}
