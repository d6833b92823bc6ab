//! Secure by default (issue 17): admin routes, forged tokens, idempotency keys per client and
//! with a lifetime, customers reading only their own orders, rate limits behind a proxy, and
//! a binary that will not serve an open API to the network.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use sagaflow_runtime::auth::{self, ApiSecurity, Claims};
use sagaflow_tests::broker_lock;
use sagaflow_tests::platform::{Options, TestApp, order_body, spawn_platform};
use sagaflow_tests::wait;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

use super::{SECRET, send, unix_now};

const ISSUER: &str = "https://id.example.test";
const AUDIENCE: &str = "sagaflow-api";

/// A token for `sub` with `roles`, signed as the platform expects.
fn token_for(sub: &str, roles: &[&str]) -> String {
    let claims = Claims::new(sub, Duration::from_secs(600), roles);
    auth::mint(SECRET, &claims, None, None).unwrap()
}

async fn secured_platform() -> TestApp {
    spawn_platform(Options {
        security: ApiSecurity::default().with_secret(SECRET),
        ..Options::default()
    })
    .await
}

/// An order body for `customer`.
fn order_for(customer: Uuid) -> Value {
    let mut body = order_body(&[("SKU-1", 1, 500)], "pm_card_visa");
    body["customer_id"] = json!(customer);
    body
}

#[tokio::test]
async fn every_admin_route_needs_the_admin_role() {
    let _broker = broker_lock().read().await;
    let app = secured_platform().await;
    let user = token_for(&Uuid::new_v4().to_string(), &["customer"]);
    let admin = token_for("ops", &["admin"]);
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/sagas/overdue".into(), None),
        (Method::GET, format!("/sagas/{}", Uuid::new_v4()), None),
        (
            Method::PUT,
            "/inventory/SKU-ADMIN".into(),
            Some(json!({"available": 3})),
        ),
        (
            Method::POST,
            "/inventory/SKU-ADMIN/adjustments".into(),
            Some(json!({"delta": 2})),
        ),
        (Method::GET, "/_control/inventory".into(), None),
        (Method::POST, "/_control/inventory".into(), Some(json!({}))),
    ];
    for (method, path, body) in &routes {
        let request = |token: Option<&str>| {
            let mut request = app
                .http
                .request(method.clone(), format!("{}{path}", app.base_url));
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request
        };
        let (status, _, _, ct, problem) = send(request(None)).await;
        assert_eq!(status, 401, "{method} {path} without a token: {problem}");
        assert_eq!(ct, "application/problem+json", "{method} {path}");
        let (status, _, _, ct, problem) = send(request(Some(&user))).await;
        assert_eq!(status, 403, "{method} {path} with a user token: {problem}");
        assert_eq!(ct, "application/problem+json", "{method} {path}");
        let (status, _, _, _, body) = send(request(Some(&admin))).await;
        assert!(
            ![401, 403].contains(&status) && status < 500,
            "{method} {path} with an admin token: {status} {body}"
        );
    }
    // The admin's PUT and adjustment went through: 3 + 2.
    let (status, _, _, _, stock) = send(
        app.http
            .get(format!("{}/inventory/SKU-ADMIN", app.base_url))
            .bearer_auth(&user),
    )
    .await;
    assert_eq!(
        (status, stock["available"].as_i64()),
        (200, Some(5)),
        "{stock}"
    );
    app.stop().await;
}

/// A JWT with `header` and `claims`, signed by `sign` over `header.claims` (or unsigned).
fn jwt(header: Value, claims: Value, signature: &[u8]) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!(
        "{}.{}.{}",
        part(&header),
        part(&claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[tokio::test]
async fn forged_and_incomplete_tokens_are_refused() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options {
        security: ApiSecurity {
            jwt_issuer: Some(ISSUER.into()),
            jwt_audience: Some(AUDIENCE.into()),
            ..ApiSecurity::default().with_secret(SECRET)
        },
        ..Options::default()
    })
    .await;
    let exp = unix_now() + 600;
    let good =
        json!({"sub": "ops", "exp": exp, "roles": ["admin"], "iss": ISSUER, "aud": AUDIENCE});
    let with = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut claims = good.clone();
        edit(claims.as_object_mut().unwrap());
        claims
    };
    let hs = |alg: jsonwebtoken::Algorithm, claims: &Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            jwt(json!({"alg": "none", "typ": "JWT"}), good.clone(), b""),
        ),
        (
            "HS512 with the same secret",
            hs(jsonwebtoken::Algorithm::HS512, &good),
        ),
        (
            "expired",
            hs(
                jsonwebtoken::Algorithm::HS256,
                &with(&|c| {
                    c.insert("exp".into(), json!(unix_now() - 3600));
                }),
            ),
        ),
        (
            "wrong issuer",
            hs(
                jsonwebtoken::Algorithm::HS256,
                &with(&|c| {
                    c.insert("iss".into(), json!("https://evil.example.test"));
                }),
            ),
        ),
        (
            "wrong audience",
            hs(
                jsonwebtoken::Algorithm::HS256,
                &with(&|c| {
                    c.insert("aud".into(), json!("another-api"));
                }),
            ),
        ),
        (
            "no sub",
            hs(
                jsonwebtoken::Algorithm::HS256,
                &with(&|c| {
                    c.remove("sub");
                }),
            ),
        ),
        (
            "empty sub",
            hs(
                jsonwebtoken::Algorithm::HS256,
                &with(&|c| {
                    c.insert("sub".into(), json!(" "));
                }),
            ),
        ),
        (
            "no exp",
            hs(
                jsonwebtoken::Algorithm::HS256,
                &with(&|c| {
                    c.remove("exp");
                }),
            ),
        ),
    ];
    let overdue = || app.http.get(format!("{}/sagas/overdue", app.base_url));
    for (name, token) in &cases {
        let (status, challenge, _, ct, problem) = send(overdue().bearer_auth(token)).await;
        assert_eq!(status, 401, "{name}: {problem}");
        assert!(challenge.contains("invalid_token"), "{name}: {challenge}");
        assert_eq!(ct, "application/problem+json", "{name}");
    }
    // The same claims, correctly signed, are accepted: the cases above failed for their flaw.
    let (status, _, _, _, body) =
        send(overdue().bearer_auth(hs(jsonwebtoken::Algorithm::HS256, &good))).await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn idempotency_keys_and_orders_belong_to_their_customer() {
    let _broker = broker_lock().read().await;
    let app = secured_platform().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (alice_token, bob_token) = (
        token_for(&alice.to_string(), &["customer"]),
        token_for(&bob.to_string(), &["customer"]),
    );
    let admin = token_for("ops", &["admin"]);
    let post = |token: &str, body: &Value, key: &str| {
        app.http
            .post(format!("{}/orders", app.base_url))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body)
    };

    // One key, two clients: two orders, neither revealing the other.
    let (status, _, _, _, first) = send(post(&alice_token, &order_for(alice), "shared-key")).await;
    assert_eq!(status, 202, "{first}");
    let (status, _, _, _, other) = send(post(&bob_token, &order_for(bob), "shared-key")).await;
    assert_eq!(status, 202, "{other}");
    assert_ne!(
        first["order_id"], other["order_id"],
        "bob got alice's order"
    );
    // The key still answers its own client with its own order.
    let (status, _, _, _, again) = send(post(&alice_token, &order_for(alice), "shared-key")).await;
    assert_eq!((status, &again["order_id"]), (202, &first["order_id"]));
    let alice_order = first["order_id"].as_str().unwrap().to_string();

    // Bob cannot place an order for alice; an admin can.
    let (status, _, _, ct, problem) = send(post(&bob_token, &order_for(alice), "bob-2")).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(problem["field"], "customer_id", "{problem}");
    let (status, _, _, _, body) = send(post(&admin, &order_for(alice), "ops-1")).await;
    assert_eq!(status, 202, "{body}");

    // Reads: bob sees alice's order nowhere, with the same 404 an unknown id gets.
    let get = |token: &str, path: &str| {
        app.http
            .get(format!("{}{path}", app.base_url))
            .bearer_auth(token.to_string())
    };
    let order_path = format!("/orders/{alice_order}");
    let view_path = format!("/views/orders/{alice_order}");
    let list_path = format!("/views/customers/{alice}/orders");
    // The view exists for its owner first, so bob's 404 below is not just lag.
    wait::until(
        "alice's order in her views",
        Duration::from_secs(30),
        || async {
            let (status, _, _, _, view) = send(get(&alice_token, &view_path)).await;
            (status == 200).then_some(view)
        },
    )
    .await;
    let (status, _, _, _, list) = send(get(&alice_token, &list_path)).await;
    assert_eq!(status, 200, "{list}");
    assert!(list.to_string().contains(&alice_order), "{list}");
    let (status, _, _, _, own) = send(get(&alice_token, &order_path)).await;
    assert_eq!(status, 200, "{own}");
    let (status, _, _, _, unknown) =
        send(get(&bob_token, &format!("/orders/{}", Uuid::new_v4()))).await;
    assert_eq!(status, 404, "{unknown}");
    for path in [&order_path, &view_path, &list_path] {
        let (status, _, _, _, body) = send(get(&bob_token, path)).await;
        assert_eq!(status, 404, "bob reading {path}: {body}");
        // Nothing beyond the id bob asked about: not the order's contents.
        assert!(
            body["items"].is_null() && body["order"].is_null() && body["orders"].is_null(),
            "{path} leaked alice's order: {body}"
        );
        let (status, _, _, _, body) = send(get(&admin, path)).await;
        assert_eq!(status, 200, "admin reading {path}: {body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn idempotency_keys_expire_and_their_rows_are_pruned() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options {
        orders: order_service::OrderConfig {
            idempotency_key_ttl_secs: 1,
            idempotency_prune_interval_ms: 100,
            ..order_service::OrderConfig::default()
        },
        ..Options::default()
    })
    .await;
    let key = "expiring-key";
    let pruned_before = app.counter("order_idempotency_keys_pruned_total").await;
    let (status, first) = app.post_order(&order_for(Uuid::new_v4()), key).await;
    assert_eq!(status, 202, "{first}");
    wait::until(
        "the expired key's row pruned",
        Duration::from_secs(30),
        || async {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE key = $1")
                    .bind(key)
                    .fetch_one(&app.pools.order)
                    .await
                    .unwrap();
            (left == 0).then_some(())
        },
    )
    .await;
    // Within its lifetime a different body would be refused (422); now it is a new order.
    let (status, second) = app.post_order(&order_for(Uuid::new_v4()), key).await;
    assert_eq!(status, 202, "{second}");
    assert_ne!(first["order_id"], second["order_id"]);
    assert!(
        app.counter("order_idempotency_keys_pruned_total").await > pruned_before,
        "the pruned key is counted"
    );
    app.stop().await;
}

/// Ten requests at once from this machine, each claiming client `forwarded_for(i)`:
/// (allowed, limited).
async fn burst_behind_a_proxy(
    app: &TestApp,
    forwarded_for: impl Fn(usize) -> String,
) -> (usize, usize) {
    let requests = (0..10).map(|i| {
        send(
            app.http
                .get(format!("{}/orders/{}", app.base_url, Uuid::new_v4()))
                .header("X-Forwarded-For", forwarded_for(i)),
        )
    });
    let mut counts = (0, 0);
    for (status, _, _, _, body) in futures::future::join_all(requests).await {
        match status {
            404 => counts.0 += 1,
            429 => counts.1 += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    counts
}

#[tokio::test]
async fn x_forwarded_for_picks_the_client_only_from_a_trusted_proxy() {
    let _broker = broker_lock().read().await;
    let limited = |trusted: &str| Options {
        security: ApiSecurity {
            trusted_proxies: trusted.parse().unwrap(),
            ..ApiSecurity::default().with_rate_limit(1, 2)
        },
        ..Options::default()
    };
    // Default: the header is the client's own claim and changes nothing: one address, one budget.
    let app = spawn_platform(limited("")).await;
    let (_, limited_count) = burst_behind_a_proxy(&app, |i| format!("198.51.100.{i}")).await;
    assert!(
        limited_count > 0,
        "spoofed X-Forwarded-For escaped the limit"
    );
    app.stop().await;

    // This machine as a trusted proxy: each forwarded client has its own budget...
    let app = spawn_platform(limited("127.0.0.1")).await;
    let (allowed, limited_count) = burst_behind_a_proxy(&app, |i| format!("198.51.100.{i}")).await;
    assert_eq!(
        (allowed, limited_count),
        (10, 0),
        "ten clients behind the proxy"
    );
    // ...and one client behind it is still limited.
    let (_, limited_count) = burst_behind_a_proxy(&app, |_| "203.0.113.7".into()).await;
    assert!(
        limited_count > 0,
        "one client behind the proxy was not limited"
    );
    app.stop().await;
}

/// Run the order-service binary with `env` (no secret) until it exits or prints `expect`:
/// (exited with success?, everything it printed). The binary is killed once seen running.
async fn order_service_with(
    env: &[(&str, &str)],
    args: &[&str],
    expect: &str,
) -> (Option<bool>, String) {
    let mut command =
        tokio::process::Command::new(sagaflow_tests::workspace_binary("order-service"));
    command
        .args(args)
        .env_remove("SAGAFLOW_JWT_SECRET")
        .env_remove("SAGAFLOW_AUTH")
        // Nothing to reach: the exposure check comes before any connection.
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env_remove("LOG_FORMAT")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("order-service starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut printed = String::new();
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains(expect) {
                return None; // running, and said what it should
            }
        }
        Some(child.wait().await.unwrap().success())
    })
    .await
    .unwrap_or_else(|_| panic!("order-service neither exited nor printed {expect:?} in 30 s"));
    let _ = child.kill().await;
    (outcome, printed)
}

#[tokio::test]
async fn a_binary_refuses_to_serve_an_open_api_to_the_network() {
    let (exited, printed) =
        order_service_with(&[("HTTP_ADDR", "0.0.0.0:0")], &[], "serving HTTP").await;
    // Waits for the exit: "serving HTTP" would mean it got past the check.
    let exited = match exited {
        Some(success) => success,
        None => panic!("order-service served an open API on 0.0.0.0: {printed}"),
    };
    assert!(!exited, "exit status must be a failure: {printed}");
    for hint in [
        "refusing to serve the API on 0.0.0.0",
        "SAGAFLOW_JWT_SECRET",
        "SAGAFLOW_AUTH=off",
        "--insecure-no-auth",
    ] {
        assert!(printed.contains(hint), "missing {hint:?} in: {printed}");
    }

    // Opened knowingly, by the variable or the flag, it starts (and says so loudly).
    for (env, args) in [
        (
            vec![("HTTP_ADDR", "0.0.0.0:0"), ("SAGAFLOW_AUTH", "off")],
            vec![],
        ),
        (vec![("HTTP_ADDR", "0.0.0.0:0")], vec!["--insecure-no-auth"]),
    ] {
        let (exited, printed) = order_service_with(&env, &args, "OPEN to anyone").await;
        assert_eq!(exited, None, "{env:?} {args:?} did not start: {printed}");
    }
    // On loopback it starts open, as a developer's machine needs.
    let (exited, printed) =
        order_service_with(&[("HTTP_ADDR", "127.0.0.1:0")], &[], "loopback only").await;
    assert_eq!(exited, None, "loopback did not start: {printed}");
}
