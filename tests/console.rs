//! The operator console in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver) with fantoccini, against a spawned platform with authentication on.
//!
//! - `the_console_shows_sagas_and_redrives_a_dead_letter_with_an_audit_row`: orders placed;
//!   the saga list filtered; a saga's steps; a poison event (an order in a currency the read
//!   model has no minor units for, which the query service dead-letters) found in the dead
//!   letters, the cause fixed (the query service restarted with the currency configured), the
//!   message redriven from the page, then shown applied, with its audit row naming the token's
//!   `sub`. With `SAGAFLOW_SCREENSHOTS=<dir>` it saves the main pages there as PNG (the README's
//!   screenshots: `SAGAFLOW_SCREENSHOTS=docs`).
//! - `the_console_needs_an_admin_token`: no token → the login form; a token without the admin
//!   role → 403; a cross-site POST → refused.
//!
//! Binaries: `/usr/bin/chromium` and `/usr/bin/chromedriver` (`scripts/test-infra.sh prereqs`
//! installs them), or `SAGAFLOW_CHROMIUM` / `SAGAFLOW_CHROMEDRIVER`.

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use sagaflow_runtime::auth::{self, ApiSecurity, Claims};
use sagaflow_tests::platform::{Options, TestApp, spawn_platform};
use sagaflow_tests::{broker_lock, wait};
use serde_json::json;
use uuid::Uuid;

const SECRET: &str = "a-console-test-secret-that-is-long-enough";
const OPERATOR: &str = "operator-ada";
const SETTLE: Duration = Duration::from_secs(60);

fn token(sub: &str, roles: &[&str]) -> String {
    auth::mint(
        SECRET,
        &Claims::new(sub, Duration::from_secs(3600), roles),
        None,
        None,
    )
    .unwrap()
}

/// A platform requiring tokens; its HTTP client sends an admin token.
async fn platform() -> TestApp {
    let mut app = spawn_platform(Options {
        security: ApiSecurity::default().with_secret(SECRET),
        step_timeout: Duration::from_secs(60),
        ..Options::default()
    })
    .await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token("test-harness", &["admin"]))
            .parse()
            .unwrap(),
    );
    app.http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    app
}

/// chromedriver on a free port and a headless Chromium session; both end when dropped, and
/// the browser's profile directory is removed then.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    /// Held only to be removed with the browser.
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let driver_path = std::env::var("SAGAFLOW_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium =
            std::env::var("SAGAFLOW_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{driver_path}: {e} (run scripts/test-infra.sh prereqs)"));
        let url = format!("http://127.0.0.1:{port}");
        let profile = tempfile::Builder::new()
            .prefix("sagaflow-console-chromium-")
            .tempdir()
            .unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1100",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let client = wait::until(
            "chromedriver to accept a session",
            Duration::from_secs(30),
            || {
                let (url, capabilities) = (url.clone(), capabilities.clone());
                async move {
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                        .capabilities(capabilities)
                        .connect(&url)
                        .await
                        .ok()
                }
            },
        )
        .await;
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The element matching `css`, waited for: a click on a form's button returns before the
    /// page the POST answers with has loaded (a redrive first reads the whole dead-letter topic).
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(SETTLE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css} within {SETTLE:?}: {e}"))
    }

    async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.unwrap()
    }

    async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for element in self.client.find_all(Locator::Css(css)).await.unwrap() {
            out.push(element.text().await.unwrap());
        }
        out
    }

    async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    /// Click a link or a form's button and wait until the next page has replaced this one:
    /// chromedriver may return from the click before a form's submission has even begun, and
    /// reading the page then reads the old one.
    async fn navigate_by(&self, css: &str) {
        let old = self.element("html").await;
        self.click(css).await;
        wait::until("the next page", SETTLE, || async {
            // The old document's element goes stale once the new one has loaded.
            old.tag_name().await.is_err().then_some(())
        })
        .await;
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self.element(css).await;
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    /// Reload the page until `check` finds what it waits for in it.
    async fn reload_until<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        wait::until(what, SETTLE, || async {
            match check().await {
                Some(found) => Some(found),
                None => {
                    self.client.refresh().await.unwrap();
                    None
                }
            }
        })
        .await
    }

    /// Save the page as `<SAGAFLOW_SCREENSHOTS>/console-<name>.png` when that is set.
    async fn screenshot(&self, name: &str) {
        if let Ok(dir) = std::env::var("SAGAFLOW_SCREENSHOTS") {
            let png = self.client.screenshot().await.unwrap();
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("console-{name}.png")), png).unwrap();
        }
    }

    /// Log in through the form with `token`.
    async fn log_in(&self, base_url: &str, token: &str) {
        self.goto(&format!("{base_url}/console/login")).await;
        self.fill("#token", token).await;
        self.navigate_by("#login").await;
    }
}

/// Place an order in `currency` with `payment_method`; returns its id.
async fn place(app: &TestApp, currency: &str, payment_method: &str) -> Uuid {
    let mut body = sagaflow_tests::platform::order_body(&[("SKU-1", 1, 1250)], payment_method);
    body["currency"] = json!(currency);
    let (status, body) = app.post_order(&body, &Uuid::new_v4().to_string()).await;
    assert_eq!(status, 202, "{body}");
    Uuid::parse_str(body["order_id"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn the_console_shows_sagas_and_redrives_a_dead_letter_with_an_audit_row() {
    let _broker = broker_lock().read().await;
    let mut app = platform().await;
    app.set_stock("SKU-1", 100).await;
    let approved = place(&app, "EUR", "pm_card_visa").await;
    let declined = place(&app, "EUR", "pm_card_chargeDeclined").await;
    // XTS is a real ISO code the order view has no minor units for: the query service
    // dead-letters this order's OrderPlaced (the saga itself runs as usual).
    let poison_order = place(&app, "XTS", "pm_card_visa").await;
    for order in [approved, declined, poison_order] {
        app.terminal(order, SETTLE).await;
    }
    let browser = Browser::start().await;
    let base = app.base_url.clone();
    browser.log_in(&base, &token(OPERATOR, &["admin"])).await;
    assert_eq!(browser.path().await, "/console/sagas", "logged in");

    // The list, with its counts per state.
    browser
        .reload_until("the counts per state", || async {
            let approved = browser.text("[data-state=APPROVED]").await;
            let rejected = browser.text("[data-state=REJECTED]").await;
            (approved == "2" && rejected == "1").then_some(())
        })
        .await;
    assert_eq!(
        browser
            .client
            .find_all(Locator::Css("tr.saga"))
            .await
            .unwrap()
            .len(),
        3
    );
    browser.screenshot("sagas").await;

    // Filtered by state, then by order id.
    browser
        .client
        .find(Locator::Css("select[name=state]"))
        .await
        .unwrap()
        .select_by_value("REJECTED")
        .await
        .unwrap();
    browser.navigate_by("#apply-filter").await;
    let rows = browser
        .client
        .find_all(Locator::Css("tr.saga"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].attr("data-order").await.unwrap(),
        Some(declined.to_string())
    );
    browser
        .client
        .find(Locator::Css("select[name=state]"))
        .await
        .unwrap()
        .select_by_value("")
        .await
        .unwrap();
    browser
        .fill("input[name=order]", &approved.to_string())
        .await;
    browser.navigate_by("#apply-filter").await;
    let rows = browser
        .client
        .find_all(Locator::Css("tr.saga"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].attr("data-order").await.unwrap(),
        Some(approved.to_string())
    );

    // The saga's page: its steps, its messages, its trace.
    browser
        .navigate_by(&format!("tr.saga[data-order='{approved}'] a"))
        .await;
    assert_eq!(browser.path().await, format!("/console/sagas/{approved}"));
    assert_eq!(browser.text("#saga-state").await, "APPROVED");
    assert_eq!(
        browser.texts("#timeline td.trigger").await,
        [
            "OrderPlaced",
            "StockReserved",
            "PaymentAuthorized",
            "OrderApproved"
        ]
    );
    assert_eq!(
        browser.texts("#timeline td.transition").await,
        [
            "— → RESERVING_STOCK",
            "RESERVING_STOCK → AUTHORIZING_PAYMENT",
            "AUTHORIZING_PAYMENT → APPROVING",
            "APPROVING → APPROVED"
        ]
    );
    assert_eq!(
        browser.texts("#timeline td.commands").await,
        ["ReserveStock", "AuthorizePayment", "ApproveOrder", ""]
    );
    let types = browser.texts("#messages td.type").await;
    for expected in [
        "OrderPlaced",
        "ReserveStock",
        "StockReserved",
        "AuthorizePayment",
        "PaymentAuthorized",
        "ApproveOrder",
        "OrderApproved",
    ] {
        assert!(
            types.iter().any(|t| t == expected),
            "{expected} in {types:?}"
        );
    }
    let trace = browser.text("#trace-id").await;
    assert!(
        trace.len() == 32 && trace.chars().all(|c| c.is_ascii_hexdigit()),
        "{trace}"
    );
    assert!(browser.text("#deadline").await.contains("terminal"));
    browser.screenshot("saga").await;

    // The poison event in the dead letters, not applied.
    browser.goto(&format!("{base}/console/dead-letters")).await;
    browser
        .navigate_by("a[href='/console/dead-letters?topic=orders.events']")
        .await;
    let row = "tr.dead-letter";
    let id = browser
        .reload_until("the poison event in orders.events.dlq", || async {
            let rows = browser.client.find_all(Locator::Css(row)).await.unwrap();
            match rows.first() {
                Some(first) => first.attr("data-id").await.unwrap(),
                None => None,
            }
        })
        .await;
    let reason = browser
        .text(&format!("{row}[data-id='{id}'] td.reason"))
        .await;
    assert!(
        reason.contains("currency XTS") && reason.contains("query-service"),
        "{reason}"
    );
    assert!(
        browser
            .text(&format!("{row}[data-id='{id}'] td.applied"))
            .await
            .starts_with("not applied")
    );

    // The fix: the query service runs again with the currency configured.
    app.stop_component("query-service").await;
    let mut fixed = query_service::Rules::default();
    fixed.add_currencies("XTS=2").unwrap();
    let stop_query = tokio_util::sync::CancellationToken::new();
    let query = tokio::spawn(query_service::run_with(
        app.pools.query.clone(),
        app.kafka.clone(),
        fixed,
        vec![query_service::lag::Group::new(
            query_service::NAME,
            &query_service::topics(),
        )],
        stop_query.clone(),
    ));

    // Redrive it from the page: acknowledged, audited with the operator's sub, then applied.
    browser
        .click(&format!("{row}[data-id='{id}'] input[type=checkbox]"))
        .await;
    browser.screenshot("dead-letters").await;
    browser.navigate_by("#redrive-selected").await;
    assert_eq!(browser.text("#flash").await, "1 message(s) redriven.");
    let audit = browser.texts("#audit tr.audit-row td").await;
    assert_eq!(audit[1], OPERATOR, "{audit:?}");
    assert_eq!(audit[2], "redrive");
    assert_eq!(audit[3], "orders.events");
    assert_eq!(audit[4], id);
    assert_eq!(audit[5], "ok");
    let applied = browser
        .reload_until("the redriven event applied", || async {
            let cell = browser
                .text(&format!("{row}[data-id='{id}'] td.applied"))
                .await;
            cell.starts_with("applied by query-service").then_some(cell)
        })
        .await;
    assert!(applied.contains("applied by query-service"), "{applied}");
    let currency: Option<String> =
        sqlx::query_scalar("SELECT currency FROM orders_view WHERE order_id = $1")
            .bind(poison_order)
            .fetch_one(&app.pools.query)
            .await
            .unwrap();
    assert_eq!(
        currency.as_deref(),
        Some("XTS"),
        "the redriven OrderPlaced is in the view"
    );
    browser.screenshot("dead-letters-redriven").await;

    // Health: backlog per database, lag per group and partition, the throughput chart.
    browser.goto(&format!("{base}/console/health")).await;
    assert_eq!(
        browser.texts("#backlog tr").await.len(),
        6,
        "a header and five databases"
    );
    let lag = browser.texts("#lag tr").await;
    assert!(
        lag.iter()
            .any(|r| r.contains("query-service") && r.contains("orders.events")),
        "{lag:?}"
    );
    browser
        .client
        .find(Locator::Css("svg.chart"))
        .await
        .unwrap();
    browser.screenshot("health").await;
    browser.goto(&format!("{base}/console/outbox")).await;
    assert_eq!(browser.texts("h1").await, ["Parked outbox rows"]);

    browser.stop().await;
    stop_query.cancel();
    query.await.unwrap().unwrap();
    app.stop().await;
}

#[tokio::test]
async fn the_console_needs_an_admin_token() {
    let _broker = broker_lock().read().await;
    let app = platform().await;
    let base = app.base_url.clone();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = plain
        .get(format!("{base}/console/sagas"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/console/login");
    let response = plain
        .post(format!("{base}/console/dead-letters/redrive"))
        .form(&[("topic", "orders.events"), ("id", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let admin = format!("Bearer {}", token(OPERATOR, &["admin"]));
    let response = plain
        .post(format!("{base}/console/dead-letters/redrive"))
        .header("authorization", &admin)
        .header("origin", "https://evil.example")
        .form(&[("topic", "orders.events"), ("id", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "a cross-site POST is refused");
    let response = plain
        .get(format!("{base}/console/sagas"))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "a bearer header works too");

    let browser = Browser::start().await;
    browser.goto(&format!("{base}/console/sagas")).await;
    assert_eq!(
        browser.path().await,
        "/console/login",
        "no token: the login form"
    );
    browser.log_in(&base, &token("customer-1", &[])).await;
    assert!(browser.text("main").await.contains("no admin role"));
    browser.log_in(&base, "not-a-token").await;
    assert!(browser.text("main").await.contains("not valid"));
    browser.goto(&format!("{base}/console/health")).await;
    assert_eq!(browser.path().await, "/console/login", "still no cookie");
    browser.log_in(&base, &token(OPERATOR, &["admin"])).await;
    assert_eq!(browser.path().await, "/console/sagas");
    browser.navigate_by("nav button").await;
    browser.goto(&format!("{base}/console/sagas")).await;
    assert_eq!(browser.path().await, "/console/login", "logged out");
    browser.stop().await;
    app.stop().await;
}
