//! Stock updates that lose no writes (issue 17, item 4): `GET /inventory/{sku}` serves the
//! row's version as a strong ETag, `PUT /inventory/{sku}` honours `If-Match` (412 when the
//! stock changed since it was read, reservations included), and
//! `POST /inventory/{sku}/adjustments` adds a delta atomically, so concurrent adjustments and
//! reservations all count.

use std::time::Duration;

use sagaflow_runtime::auth::ApiSecurity;
use sagaflow_tests::broker_lock;
use sagaflow_tests::platform::{Options, TestApp, spawn_platform};
use serde_json::{Value, json};

use super::{SECRET, token};

/// How long a saga may take here (several run at once on shared servers).
const SAGA_DEADLINE: Duration = Duration::from_secs(90);

/// What a test looks at in a response.
#[derive(Debug)]
struct Reply {
    status: u16,
    etag: Option<String>,
    content_type: String,
    body: Value,
}

async fn reply(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (etag, content_type) = (header("etag"), header("content-type").unwrap_or_default());
    Reply {
        status: response.status().as_u16(),
        etag,
        content_type,
        body: response.json().await.unwrap_or(Value::Null),
    }
}

fn get(app: &TestApp, sku: &str) -> reqwest::RequestBuilder {
    app.http.get(format!("{}/inventory/{sku}", app.base_url))
}

fn put(
    app: &TestApp,
    sku: &str,
    available: i64,
    if_match: Option<&str>,
) -> reqwest::RequestBuilder {
    let request = app
        .http
        .put(format!("{}/inventory/{sku}", app.base_url))
        .json(&json!({ "available": available }));
    match if_match {
        Some(tag) => request.header("If-Match", tag),
        None => request,
    }
}

fn adjust(app: &TestApp, sku: &str, body: &Value) -> reqwest::RequestBuilder {
    app.http
        .post(format!("{}/inventory/{sku}/adjustments", app.base_url))
        .json(body)
}

/// The ETag of a 200, checked to be a strong validator of the form `"v<version>"`.
fn etag_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{reply:?}");
    let etag = reply.etag.clone().expect("a 200 carries an ETag");
    assert!(version_of(&etag) >= 1, "{etag}");
    etag
}

/// `"v7"` → 7.
fn version_of(etag: &str) -> i64 {
    etag.strip_prefix("\"v")
        .and_then(|rest| rest.strip_suffix('"'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a strong version ETag: {etag:?}"))
}

/// (available, reserved) of a stock JSON body.
fn quantities(body: &Value) -> (i64, i64) {
    (
        body["available"].as_i64().unwrap(),
        body["reserved"].as_i64().unwrap(),
    )
}

fn assert_problem(reply: &Reply, status: u16, field: Option<&str>) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.content_type, "application/problem+json", "{reply:?}");
    assert_eq!(reply.body["status"], status, "{reply:?}");
    assert!(reply.body["detail"].is_string(), "{reply:?}");
    if let Some(field) = field {
        assert_eq!(reply.body["field"], field, "{reply:?}");
    }
}

#[tokio::test]
async fn etags_round_trip_and_a_stale_if_match_is_refused_with_412() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;

    // Without If-Match, PUT creates (as before ETags existed), at version 1.
    let created = reply(put(&app, "SKU-E", 10, None)).await;
    assert_eq!(etag_of(&created), r#""v1""#);
    let read = reply(get(&app, "SKU-E")).await;
    let first = etag_of(&read);
    assert_eq!(
        (first.as_str(), quantities(&read.body)),
        (r#""v1""#, (10, 0))
    );

    let updated = reply(put(&app, "SKU-E", 12, Some(&first))).await;
    let second = etag_of(&updated);
    assert_ne!(second, first, "a write changes the ETag");
    assert_eq!(quantities(&updated.body), (12, 0));
    assert_eq!(etag_of(&reply(get(&app, "SKU-E")).await), second);

    // The first ETag is stale now: refused, nothing written.
    let stale = reply(put(&app, "SKU-E", 99, Some(&first))).await;
    assert_problem(&stale, 412, Some("If-Match"));
    assert!(stale.etag.is_none(), "{stale:?}");
    let after = reply(get(&app, "SKU-E")).await;
    assert_eq!(
        (etag_of(&after), quantities(&after.body)),
        (second.clone(), (12, 0))
    );

    // Weak tags never match (If-Match compares strongly); a list matches if one tag does;
    // `*` matches any existing row.
    let weak = reply(put(&app, "SKU-E", 99, Some(&format!("W/{second}")))).await;
    assert_problem(&weak, 412, Some("If-Match"));
    let listed = reply(put(&app, "SKU-E", 13, Some(&format!("{first}, {second}")))).await;
    let third = etag_of(&listed);
    let any = reply(put(&app, "SKU-E", 14, Some("*"))).await;
    assert_ne!(etag_of(&any), third);
    assert_eq!(quantities(&any.body), (14, 0));

    // A malformed If-Match is refused rather than ignored (ignoring it would write blindly).
    let malformed = reply(put(&app, "SKU-E", 99, Some("v1"))).await;
    assert_problem(&malformed, 400, Some("If-Match"));

    // A conditional PUT never creates: no current representation matches, not even `*`.
    for tag in ["*", r#""v1""#] {
        let missing = reply(put(&app, "SKU-NEW", 5, Some(tag))).await;
        assert_problem(&missing, 412, Some("If-Match"));
    }
    assert_problem(&reply(get(&app, "SKU-NEW")).await, 404, None);
    assert_eq!(quantities(&reply(get(&app, "SKU-E")).await.body), (14, 0));
    app.stop().await;
}

#[tokio::test]
async fn a_reservation_changes_the_etag_so_a_put_based_on_an_earlier_read_gets_412() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    app.set_stock("SKU-R", 10).await;
    let before = etag_of(&reply(get(&app, "SKU-R")).await);

    let order = app.place(&[("SKU-R", 2, 500)], "pm_card_visa").await;
    let order = app.terminal(order, SAGA_DEADLINE).await;
    assert_eq!(order["status"], "APPROVED", "{order}");

    let read = reply(get(&app, "SKU-R")).await;
    let now = etag_of(&read);
    assert_eq!(quantities(&read.body), (8, 2), "the approved order holds 2");
    assert_ne!(now, before, "the reservation bumped the version");

    // A restock computed from the read before the order would overwrite its reservation.
    let stale = reply(put(&app, "SKU-R", 10, Some(&before))).await;
    assert_problem(&stale, 412, Some("If-Match"));
    assert_eq!(etag_of(&reply(get(&app, "SKU-R")).await), now);
    assert_eq!(app.stock("SKU-R").await, (8, 2), "nothing written");

    // Re-read, re-decide, retry: applies.
    let retried = reply(put(&app, "SKU-R", 10, Some(&now))).await;
    etag_of(&retried);
    assert_eq!(quantities(&retried.body), (10, 2));
    app.stop().await;
}

#[tokio::test]
async fn adjustments_add_atomically_and_are_admin_only() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options {
        security: ApiSecurity::default().with_secret(SECRET),
        ..Options::default()
    })
    .await;
    let admin = token("ops", &["admin"]);
    let user = token("alice", &["customer"]);
    let restocked = etag_of(&reply(put(&app, "SKU-A", 10, None).bearer_auth(&admin)).await);

    let added = reply(adjust(&app, "SKU-A", &json!({"delta": 5})).bearer_auth(&admin)).await;
    let after = etag_of(&added);
    assert_ne!(after, restocked, "an adjustment bumps the version");
    assert_eq!(added.body["sku"], "SKU-A", "{added:?}");
    assert_eq!(quantities(&added.body), (15, 0), "same shape as GET");
    let taken = reply(adjust(&app, "SKU-A", &json!({"delta": -3})).bearer_auth(&admin)).await;
    etag_of(&taken);
    assert_eq!(quantities(&taken.body), (12, 0));

    // (case, body, expected status, field named)
    let refused: Vec<(&str, Value, u16, Option<&str>)> = vec![
        ("zero", json!({"delta": 0}), 422, Some("delta")),
        ("below zero", json!({"delta": -13}), 422, Some("delta")),
        ("missing", json!({}), 422, Some("delta")),
        ("not a number", json!({"delta": "5"}), 422, Some("delta")),
        (
            "past i32",
            json!({"delta": 1_i64 << 40}),
            422,
            Some("delta"),
        ),
        ("unknown field", json!({"delta": 1, "why": "x"}), 422, None),
    ];
    for (name, body, status, field) in refused {
        let refused = reply(adjust(&app, "SKU-A", &body).bearer_auth(&admin)).await;
        assert_eq!(refused.status, status, "{name}: {refused:?}");
        assert_problem(&refused, status, field);
    }
    let malformed = reply(
        app.http
            .post(format!("{}/inventory/SKU-A/adjustments", app.base_url))
            .bearer_auth(&admin)
            .header("Content-Type", "application/json")
            .body("{\"delta\": "),
    )
    .await;
    assert_problem(&malformed, 400, None);
    let not_json = reply(
        app.http
            .post(format!("{}/inventory/SKU-A/adjustments", app.base_url))
            .bearer_auth(&admin)
            .header("Content-Type", "text/plain")
            .body(r#"{"delta": 1}"#),
    )
    .await;
    assert_problem(&not_json, 415, None);

    let forbidden = reply(adjust(&app, "SKU-A", &json!({"delta": 5})).bearer_auth(&user)).await;
    assert_problem(&forbidden, 403, None);
    let anonymous = reply(adjust(&app, "SKU-A", &json!({"delta": 5}))).await;
    assert_problem(&anonymous, 401, None);
    let unknown = reply(adjust(&app, "SKU-NOPE", &json!({"delta": 5})).bearer_auth(&admin)).await;
    assert_problem(&unknown, 404, None);
    assert_problem(
        &reply(get(&app, "SKU-NOPE").bearer_auth(&user)).await,
        404,
        None,
    );

    // None of the refusals wrote anything.
    let read = reply(get(&app, "SKU-A").bearer_auth(&user)).await;
    assert_eq!(
        (etag_of(&read), quantities(&read.body)),
        (etag_of(&taken), (12, 0))
    );
    app.stop().await;
}

#[tokio::test]
async fn concurrent_adjustments_and_reservations_lose_nothing() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    const SKU: &str = "SKU-RACE";
    const INITIAL: i64 = 5;
    app.set_stock(SKU, INITIAL).await;

    // 20 adjustments of +1..+5 racing 10 one-unit orders; every third order's card is
    // declined, so its reservation is released again (a third kind of write in the race).
    let deltas: Vec<i64> = (0..20).map(|i| i % 5 + 1).collect();
    let adjustments = deltas
        .iter()
        .map(|delta| reply(adjust(&app, SKU, &json!({ "delta": delta }))));
    let orders = (0..10).map(|i| {
        let card = if i % 3 == 0 {
            "pm_card_chargeDeclined"
        } else {
            "pm_card_visa"
        };
        app.place(&[(SKU, 1, 100)], card)
    });
    let (adjusted, order_ids) = tokio::join!(
        futures::future::join_all(adjustments),
        futures::future::join_all(orders)
    );
    for reply in &adjusted {
        etag_of(reply);
    }
    // Each adjustment saw a different version: none overwrote another.
    let versions: std::collections::BTreeSet<i64> = adjusted
        .iter()
        .map(|r| version_of(r.etag.as_deref().unwrap()))
        .collect();
    assert_eq!(versions.len(), adjusted.len(), "{versions:?}");

    let mut approved = 0;
    for id in &order_ids {
        // REJECTED is recorded only after the saga's compensation (ReleaseStock) was applied,
        // so a finished order has nothing in flight in inventory.
        let order = app.terminal(*id, SAGA_DEADLINE).await;
        match order["status"].as_str() {
            Some("APPROVED") => approved += 1,
            Some("REJECTED") => {}
            other => panic!("order {id}: {other:?}: {order}"),
        }
    }

    // Invariant, once every saga finished: adjustments are the only writes that change
    // available + reserved (reserving and releasing move units between the two columns), so
    //   available + reserved == INITIAL + sum(deltas);
    // and an APPROVED order keeps its reservation (sold; nothing moves it out), while a
    // REJECTED one either never reserved (out of stock) or had it released, so
    //   reserved == units of APPROVED orders (one each).
    let read = reply(get(&app, SKU)).await;
    let (available, reserved) = quantities(&read.body);
    let added: i64 = deltas.iter().sum();
    assert_eq!(
        available + reserved,
        INITIAL + added,
        "available {available} + reserved {reserved}"
    );
    assert_eq!(reserved, approved, "reserved vs approved orders");

    // Every write bumped the version exactly once: the PUT that created the row (version 1),
    // each adjustment, each reservation, and each release of a reservation that held stock.
    let (reservations, releases): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status IN ('RESERVED', 'RELEASED') AND lines <> '[]'),
                count(*) FILTER (WHERE status = 'RELEASED' AND lines <> '[]')
         FROM reservations",
    )
    .fetch_one(&app.pools.inventory)
    .await
    .unwrap();
    assert_eq!(reservations - releases, approved, "held reservations");
    let expected = 1 + deltas.len() as i64 + reservations + releases;
    assert_eq!(version_of(&etag_of(&read)), expected, "{read:?}");
    app.stop().await;
}
