//! HTTP hardening of `POST /orders`: every client mistake gets a clear Problem JSON status
//! (never a 5xx), names the field where there is one, and writes nothing. With a JWT secret
//! configured: 401 without a valid token, 403 on admin routes without the admin role, 429 with
//! `Retry-After` per client over the rate limit.

use std::time::Duration;

use sagaflow_runtime::auth::{self, ApiSecurity, Claims};
use sagaflow_tests::platform::{Options, TestApp, order_body, spawn_platform};
use sagaflow_tests::{broker_lock, wait};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

async fn raw_post(
    app: &TestApp,
    content_type: Option<&str>,
    body: Vec<u8>,
    key: Option<&str>,
) -> (u16, String, Value) {
    let mut request = app.http.post(format!("{}/orders", app.base_url)).body(body);
    if let Some(ct) = content_type {
        request = request.header("Content-Type", ct);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let ct = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, response.json().await.unwrap_or(Value::Null))
}

/// Orders and OrderPlaced rows stored. (Only OrderPlaced: the verdicts the order service
/// announces once a saga ends are outbox rows too, written while a test runs.)
async fn rows(app: &TestApp) -> (i64, i64) {
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.pools.order)
        .await
        .unwrap();
    let outbox: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE message_type = 'OrderPlaced'")
            .fetch_one(&app.pools.order)
            .await
            .unwrap();
    (orders, outbox)
}

fn valid() -> Value {
    order_body(&[("SKU-1", 2, 1250)], "pm_card_visa")
}

#[tokio::test]
async fn client_mistakes_get_problem_json_naming_the_field_and_write_nothing() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    let json_ct = Some("application/json");
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut body = valid();
        edit(&mut body);
        serde_json::to_vec(&body).unwrap()
    };
    /// (case, content type, body, expected status, field named in the problem)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            json_ct,
            b"{\"customer_id\": ".to_vec(),
            400,
            None,
        ),
        (
            "wrong content type",
            Some("text/plain"),
            serde_json::to_vec(&valid()).unwrap(),
            415,
            None,
        ),
        (
            "no content type",
            None,
            serde_json::to_vec(&valid()).unwrap(),
            415,
            None,
        ),
        (
            "unknown field",
            json_ct,
            with(&|b| b["coupon"] = json!("FREE")),
            422,
            Some("coupon"),
        ),
        (
            "wrong type",
            json_ct,
            with(&|b| b["items"][0]["quantity"] = json!("two")),
            422,
            Some("items[0].quantity"),
        ),
        (
            "zero quantity",
            json_ct,
            with(&|b| b["items"][0]["quantity"] = json!(0)),
            422,
            Some("items[0].quantity"),
        ),
        (
            "negative quantity",
            json_ct,
            with(&|b| b["items"][0]["quantity"] = json!(-1)),
            422,
            Some("items[0].quantity"),
        ),
        (
            "overflowing amount",
            json_ct,
            with(&|b| b["items"][0]["unit_price_cents"] = json!(1e30)),
            422,
            Some("items[0].unit_price_cents"),
        ),
        (
            "price above the limit",
            json_ct,
            with(&|b| b["items"][0]["unit_price_cents"] = json!(i64::MAX)),
            422,
            Some("items[0].unit_price_cents"),
        ),
        (
            "too many lines",
            json_ct,
            with(&|b| {
                b["items"] = json!(vec![
                    json!({"sku": "A", "quantity": 1, "unit_price_cents": 1});
                    101
                ])
            }),
            422,
            Some("items"),
        ),
        (
            "no lines",
            json_ct,
            with(&|b| b["items"] = json!([])),
            422,
            Some("items"),
        ),
        (
            "bad currency",
            json_ct,
            with(&|b| b["currency"] = json!("euro")),
            422,
            Some("currency"),
        ),
        (
            "bad customer id",
            json_ct,
            with(&|b| b["customer_id"] = json!("nope")),
            422,
            Some("customer_id"),
        ),
        (
            "body over the limit",
            json_ct,
            with(&|b| b["payment_method"] = json!("x".repeat(100 * 1024))),
            413,
            None,
        ),
    ];
    for (name, content_type, body, expected, field) in cases {
        let (status, ct, problem) =
            raw_post(&app, content_type, body, Some(&Uuid::new_v4().to_string())).await;
        assert_eq!(status, expected, "{name}: {problem}");
        assert_eq!(ct, "application/problem+json", "{name}");
        assert_eq!(problem["status"], expected, "{name}: {problem}");
        assert!(problem["detail"].is_string(), "{name}: {problem}");
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{name}: {problem}");
        }
        let detail = problem["detail"].as_str().unwrap().to_lowercase();
        assert!(
            !detail.contains("sqlx") && !detail.contains("postgres"),
            "{name}: internals leaked: {detail}"
        );
    }
    assert_eq!(
        rows(&app).await,
        (0, 0),
        "no rows written for any rejected request"
    );
    app.stop().await;
}

#[tokio::test]
async fn idempotency_key_rules() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    let body = serde_json::to_vec(&valid()).unwrap();
    let ct = Some("application/json");

    let (status, _, problem) = raw_post(&app, ct, body.clone(), None).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("Idempotency-Key")),
        "missing key"
    );
    let (status, _, _) = raw_post(&app, ct, body.clone(), Some(&"k".repeat(256))).await;
    assert_eq!(status, 400, "key over 255 characters");
    assert_eq!(rows(&app).await, (0, 0));

    let (first, _, created) = raw_post(&app, ct, body.clone(), Some("key-1")).await;
    let (again, _, replay) = raw_post(&app, ct, body.clone(), Some("key-1")).await;
    assert_eq!((first, again), (202, 202));
    assert_eq!(created, replay, "same key + same body → the same response");
    let other = serde_json::to_vec(&order_body(&[("SKU-1", 3, 1250)], "pm_card_visa")).unwrap();
    let (status, _, problem) = raw_post(&app, ct, other, Some("key-1")).await;
    assert_eq!(status, 422, "same key + different body: {problem}");
    assert_eq!(rows(&app).await, (1, 1));

    // 50 concurrent requests with one key: one order, no 5xx.
    let body = serde_json::to_vec(&valid()).unwrap();
    let requests = (0..50).map(|_| raw_post(&app, ct, body.clone(), Some("key-concurrent")));
    let responses = futures::future::join_all(requests).await;
    let ids: std::collections::BTreeSet<String> = responses
        .iter()
        .map(|(status, _, body)| {
            assert_eq!(*status, 202, "{body}");
            body["order_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one order for one key");
    assert_eq!(rows(&app).await, (2, 2));
    app.stop().await;
}

#[tokio::test]
async fn a_slow_client_times_out_with_408() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options {
        request_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let address = app.base_url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    // Announce a body and send only part of it, then stall.
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nIdempotency-Key: slow\r\nContent-Length: 500\r\n\r\n{{\"customer_id\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            response.extend_from_slice(&buf[..n]);
            if n == 0 || response.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server answered instead of waiting for ever"
    );
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(rows(&app).await, (0, 0));
    app.stop().await;
}

const SECRET: &str = "http-test-secret-0123456789-abcdefghijklmnop";

fn token(sub: &str, roles: &[&str]) -> String {
    let claims = Claims::new(sub, Duration::from_secs(600), roles);
    auth::mint(SECRET, &claims, None, None).unwrap()
}

/// (status, WWW-Authenticate, Retry-After, content type, body) of a request.
async fn send(request: reqwest::RequestBuilder) -> (u16, String, String, String, Value) {
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (challenge, retry_after, ct) = (
        header("www-authenticate"),
        header("retry-after"),
        header("content-type"),
    );
    let status = response.status().as_u16();
    (
        status,
        challenge,
        retry_after,
        ct,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn with_a_secret_the_api_needs_a_valid_token_and_admin_routes_the_admin_role() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options {
        security: ApiSecurity::default().with_secret(SECRET),
        ..Options::default()
    })
    .await;
    let body = valid();
    let post = || {
        app.http
            .post(format!("{}/orders", app.base_url))
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&body)
    };
    let expired = auth::mint(
        SECRET,
        &Claims {
            sub: "alice".into(),
            exp: unix_now() - 3600,
            nbf: None,
            roles: vec![],
        },
        None,
        None,
    )
    .unwrap();
    let forged = auth::mint(
        "not-the-secret-not-the-secret-not-the-secret",
        &Claims::new("alice", Duration::from_secs(600), &["admin"]),
        None,
        None,
    )
    .unwrap();
    // (case, Authorization header, whether the challenge names invalid_token)
    let cases: Vec<(&str, Option<String>, bool)> = vec![
        ("no token", None, false),
        ("expired token", Some(format!("Bearer {expired}")), true),
        ("wrong signature", Some(format!("Bearer {forged}")), true),
        ("not a JWT", Some("Bearer abc.def.ghi".into()), true),
        (
            "basic scheme",
            Some(format!("Basic {}", token("alice", &[]))),
            true,
        ),
    ];
    for (name, authorization, invalid_token) in cases {
        let mut request = post();
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        let (status, challenge, _, ct, problem) = send(request).await;
        assert_eq!(status, 401, "{name}: {problem}");
        assert!(challenge.starts_with("Bearer"), "{name}: {challenge}");
        assert_eq!(
            challenge.contains(r#"error="invalid_token""#),
            invalid_token,
            "{name}: {challenge}"
        );
        assert_eq!(ct, "application/problem+json", "{name}");
        assert_eq!(problem["status"], 401, "{name}: {problem}");
        let detail = problem["detail"].as_str().unwrap().to_lowercase();
        assert!(
            !detail.contains("jsonwebtoken") && !detail.contains("signature"),
            "{name}: internals leaked: {detail}"
        );
    }
    assert_eq!(
        rows(&app).await,
        (0, 0),
        "nothing written without a valid token"
    );

    // A valid (non-admin) token of the body's customer: the order is placed and can be read
    // back.
    let user = token(body["customer_id"].as_str().unwrap(), &["customer"]);
    let (status, _, _, _, created) = send(post().bearer_auth(&user)).await;
    assert_eq!(status, 202, "{created}");
    let id = created["order_id"].as_str().unwrap();
    let (status, _, _, _, order) = send(
        app.http
            .get(format!("{}/orders/{id}", app.base_url))
            .bearer_auth(&user),
    )
    .await;
    assert_eq!(
        (status, order["order_id"].as_str()),
        (200, Some(id)),
        "{order}"
    );
    assert_eq!(rows(&app).await, (1, 1));

    // Admin routes: 403 for the user, 200 for an admin.
    let admin = token("ops", &["admin"]);
    let overdue = || app.http.get(format!("{}/sagas/overdue", app.base_url));
    let (status, challenge, _, ct, problem) = send(overdue().bearer_auth(&user)).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(ct, "application/problem+json");
    assert!(challenge.contains("insufficient_scope"), "{challenge}");
    let (status, _, _, _, body) = send(overdue().bearer_auth(&admin)).await;
    assert_eq!(status, 200, "{body}");
    let (status, ..) = send(overdue()).await;
    assert_eq!(status, 401, "admin route without a token");

    // Restocking is admin; reading stock is public.
    let restock = |t: &str| {
        app.http
            .put(format!("{}/inventory/SKU-AUTH", app.base_url))
            .bearer_auth(t)
            .json(&json!({"available": 7}))
    };
    let (status, _, _, _, problem) = send(restock(&user)).await;
    assert_eq!(status, 403, "{problem}");
    let stock = |t: &str| {
        app.http
            .get(format!("{}/inventory/SKU-AUTH", app.base_url))
            .bearer_auth(t)
    };
    let (status, ..) = send(stock(&user)).await;
    assert_eq!(status, 404, "the user's PUT wrote nothing");
    let (status, _, _, _, body) = send(restock(&admin)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _, _, body) = send(stock(&user)).await;
    assert_eq!(
        (status, body["available"].as_i64()),
        (200, Some(7)),
        "{body}"
    );

    // Health and metrics stay open for orchestrators.
    for path in ["/health/live", "/health/ready", "/metrics"] {
        let (status, ..) = send(app.http.get(format!("{}{path}", app.base_url))).await;
        assert_eq!(status, 200, "{path}");
    }
    app.stop().await;
}

/// With authentication on, a customer reads only their own orders: another customer's token
/// finds neither the order, nor its view, nor its payment, nor what its customer was sent — and
/// learns nothing of its existence (404s and an empty list, as for an order that does not
/// exist). An admin reads everything.
#[tokio::test]
async fn a_customer_reads_only_their_own_orders_payments_views_and_notifications() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options {
        security: ApiSecurity::default().with_secret(SECRET),
        ..Options::default()
    })
    .await;
    let body = order_body(&[("SKU-OWN", 1, 990)], "pm_card_visa");
    let owner = token(body["customer_id"].as_str().unwrap(), &["customer"]);
    let stranger = token(&Uuid::new_v4().to_string(), &["customer"]);
    let admin = token("ops", &["admin"]);
    let (status, _, _, _, stock) = send(
        app.http
            .put(format!("{}/inventory/SKU-OWN", app.base_url))
            .bearer_auth(&admin)
            .json(&json!({"available": 10})),
    )
    .await;
    assert_eq!(status, 200, "{stock}");
    let (status, _, _, _, created) = send(
        app.http
            .post(format!("{}/orders", app.base_url))
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .bearer_auth(&owner)
            .json(&body),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let id = created["order_id"].as_str().unwrap().to_string();
    let notifications = |t: &str| {
        app.http
            .get(format!("{}/notifications?order_id={id}", app.base_url))
            .bearer_auth(t)
    };
    // The saga ends with a notification to the customer, and the view has seen the order.
    let sent = wait::until(
        "the customer's notification and the order's view",
        Duration::from_secs(60),
        || async {
            let (_, _, _, _, sent) = send(notifications(&owner)).await;
            let (view, ..) = send(
                app.http
                    .get(format!("{}/views/orders/{id}", app.base_url))
                    .bearer_auth(&owner),
            )
            .await;
            let sent = sent.as_array().cloned().unwrap_or_default();
            (!sent.is_empty() && view == 200).then_some(sent)
        },
    )
    .await;
    assert!(
        sent.iter().all(|n| n["order_id"] == id.as_str()),
        "{sent:?}"
    );

    let (status, _, _, ct, listed) = send(notifications(&stranger)).await;
    assert_eq!(
        (status, listed.clone()),
        (200, json!([])),
        "another customer is shown nothing of the order's notifications"
    );
    assert_eq!(ct, "application/json");
    for path in [
        format!("/orders/{id}"),
        format!("/views/orders/{id}"),
        format!("/payments/{id}"),
    ] {
        let get = |t: &str| {
            app.http
                .get(format!("{}{path}", app.base_url))
                .bearer_auth(t)
        };
        let (status, _, _, ct, problem) = send(get(&stranger)).await;
        assert_eq!(status, 404, "{path} for another customer: {problem}");
        assert_eq!(ct, "application/problem+json", "{path}");
        let (status, _, _, _, found) = send(get(&admin)).await;
        assert_eq!(status, 200, "{path} for an admin: {found}");
    }
    let (status, _, _, _, listed) = send(notifications(&admin)).await;
    assert_eq!(
        (status, listed.as_array().map(Vec::len)),
        (200, Some(sent.len())),
        "an admin sees the order's notifications: {listed}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_over_its_rate_limit_gets_429_with_retry_after_and_others_are_not_limited() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options {
        security: ApiSecurity::default()
            .with_secret(SECRET)
            .with_rate_limit(5, 5),
        ..Options::default()
    })
    .await;
    let get = |t: &str| {
        app.http
            .get(format!("{}/orders/{}", app.base_url, Uuid::new_v4()))
            .bearer_auth(t)
    };
    let alice = token("alice", &[]);
    let limited_before = app.counter("http_rate_limited_total").await;
    let started = std::time::Instant::now();
    let responses = futures::future::join_all((0..20).map(|_| send(get(&alice)))).await;
    let elapsed = started.elapsed();
    let mut allowed = 0;
    let mut limited = 0;
    for (status, _, retry_after, ct, body) in &responses {
        match status {
            404 => allowed += 1,
            429 => {
                limited += 1;
                let secs: u64 = retry_after
                    .parse()
                    .unwrap_or_else(|_| panic!("Retry-After: {retry_after:?}"));
                assert!(secs >= 1, "Retry-After {secs}");
                assert_eq!(ct, "application/problem+json");
                assert_eq!(body["status"], 429, "{body}");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    // Burst 5, then 5 per second: no more can have passed in the time the burst took.
    let ceiling = 5 + (5.0 * elapsed.as_secs_f64()).ceil() as usize;
    assert!(
        limited > 0,
        "20 requests at once from one client: none limited"
    );
    assert!(
        allowed <= ceiling,
        "{allowed} allowed in {elapsed:?}, at most {ceiling} expected"
    );

    // Another client (another `sub`) has its own budget.
    let bob = token("bob", &[]);
    for _ in 0..5 {
        let (status, _, _, _, body) = send(get(&bob)).await;
        assert_eq!(status, 404, "bob is not limited by alice's traffic: {body}");
    }
    // Every refusal is counted (the metrics route itself is never limited).
    assert!(
        app.counter("http_rate_limited_total").await - limited_before >= limited as f64,
        "{limited} requests limited"
    );
    app.stop().await;
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[path = "http/inventory.rs"]
mod inventory;
#[path = "http/security.rs"]
mod security;

/// Path parameters a client got wrong get Problem JSON naming the parameter: never a 500 (a NUL
/// byte in a SKU reached PostgreSQL) and never axum's plain-text rejection (bytes that are not
/// UTF-8 in an id).
#[tokio::test]
async fn malformed_path_parameters_get_problem_json() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    let client = reqwest::Client::new();
    // One mistake, one answer, whichever service owns the path: 422 naming the parameter.
    for (path, expected, field) in [
        ("/views/stock/%00", 422, "sku"),
        ("/views/stock/SKU%20ONE", 422, "sku"),
        ("/orders/%FF", 422, "id"),
        ("/orders/not-a-uuid", 422, "id"),
        ("/payments/%FF", 422, "order_id"),
        ("/sagas/%FF", 422, "id"),
        ("/sagas/not-a-uuid", 422, "id"),
        ("/views/orders/not-a-uuid", 422, "id"),
    ] {
        let response = client
            .get(format!("{}{path}", app.base_url))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let ct = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let body = response.text().await.unwrap();
        assert_eq!(status, expected, "{path}: {body}");
        assert_eq!(ct, "application/problem+json", "{path}: {body}");
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["status"], expected, "{path}: {body}");
        assert_eq!(problem["field"], field, "{path}: {body}");
    }
    app.stop().await;
}

/// Group commit of `POST /orders` (issue 15): concurrent orders are stored in shared
/// transactions, each answered 202 only once its order is committed, and Idempotency-Keys keep
/// their meaning inside a batch — the same key with two bodies at once places one order, of
/// the body that got the 202, and answers the other 422.
#[tokio::test]
async fn concurrent_orders_share_commits_and_keep_their_idempotency_keys() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    let ct = Some("application/json");
    let body = |quantity: i64| {
        serde_json::to_vec(&order_body(&[("SKU-1", quantity, 1250)], "pm_card_visa")).unwrap()
    };
    let singles = (0..100).map(|i| (format!("gc-single-{i}"), body(1)));
    let pairs = (0..20).flat_map(|i| {
        let key = format!("gc-pair-{i}");
        [(key.clone(), body(1)), (key, body(2))]
    });
    let requests: Vec<(String, Vec<u8>)> = singles.chain(pairs).collect();
    let responses = futures::future::join_all(
        requests
            .iter()
            .map(|(key, body)| raw_post(&app, ct, body.clone(), Some(key))),
    )
    .await;

    let mut accepted = std::collections::BTreeMap::new();
    for ((key, body), (status, _, answer)) in requests.iter().zip(&responses) {
        match status {
            202 => {
                let order_id = answer["order_id"].as_str().unwrap().to_string();
                let previous = accepted.insert(key.clone(), (order_id, body.clone()));
                assert!(previous.is_none(), "two 202s for {key}");
            }
            422 => assert!(key.starts_with("gc-pair-"), "{key}: {answer}"),
            _ => panic!("{key}: {status} {answer}"),
        }
    }
    assert_eq!(accepted.len(), 120, "every key placed one order");

    // Answered after the commit: each accepted order is there, with the body that got the 202.
    for (key, (order_id, body)) in &accepted {
        let sent: Value = serde_json::from_slice(body).unwrap();
        let stored = app.order(order_id.parse().unwrap()).await;
        assert_eq!(stored["items"], sent["items"], "{key}: {stored}");
    }
    assert_eq!(
        rows(&app).await,
        (120, 120),
        "one order and one OrderPlaced per key"
    );
    // Keys are written once, by the transaction that stored their order: fewer transactions
    // than orders means orders shared commits.
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM idempotency_keys WHERE key LIKE 'gc-%'",
    )
    .fetch_one(&app.pools.order)
    .await
    .unwrap();
    assert!(
        transactions < 120,
        "120 orders in {transactions} transactions: no group commit"
    );
    app.stop().await;
}
