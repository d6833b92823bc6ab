//! Running it like a user: `sagaflow dev` as a subprocess, and one trace per order.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sagaflow_schemas::{header_names, topics};
use sagaflow_tests::kafka_probe::read_all;
use sagaflow_tests::platform::{Options, order_body, spawn_platform};
use sagaflow_tests::{broker_lock, infra, sagaflow_binary, wait};
use serde_json::Value;
use uuid::Uuid;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, however it ends.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// `sagaflow dev` as a subprocess on the test PostgreSQL (its own database), its embedded
/// broker and HTTP on free ports, ready. Killed when the returned guard drops.
async fn start_dev(extra_env: &[(&str, String)]) -> (Child, String) {
    let (child, base_url, _) = start_dev_with_broker(extra_env).await;
    (child, base_url)
}

/// [`start_dev`], also returning the embedded broker's address.
async fn start_dev_with_broker(extra_env: &[(&str, String)]) -> (Child, String, String) {
    start_dev_with_output(extra_env, Stdio::null, Stdio::null).await
}

/// What a child process printed, line by line, stdout and stderr interleaved as read.
type Output = Arc<Mutex<Vec<String>>>;

/// [`start_dev`] with its stdout and stderr read into an [`Output`] (until it exits; the
/// returned task ends then).
async fn start_dev_capturing_output() -> (Child, String, Output, tokio::task::JoinHandle<()>) {
    let (mut child, base_url, _) = start_dev_with_output(&[], Stdio::piped, Stdio::piped).await;
    let output = Output::default();
    let stdout = child.0.stdout.take().expect("piped stdout");
    let stderr = child.0.stderr.take().expect("piped stderr");
    let readers = tokio::spawn({
        let output = output.clone();
        async move {
            tokio::join!(
                read_lines(stdout, output.clone()),
                read_lines(stderr, output)
            );
        }
    });
    (child, base_url, output, readers)
}

async fn read_lines(from: impl tokio::io::AsyncRead + Unpin, into: Output) {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        into.lock().unwrap().push(line);
    }
}

async fn start_dev_with_output(
    extra_env: &[(&str, String)],
    stdout: fn() -> Stdio,
    stderr: fn() -> Stdio,
) -> (Child, String, String) {
    let infra = infra();
    let server = infra
        .postgres_admin_url
        .rsplit_once('/')
        .unwrap()
        .0
        .to_string();
    let base = format!("dev_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let (http_port, broker_port, provider_port) = (free_port(), free_port(), free_port());
    let mut command = tokio::process::Command::new(sagaflow_binary());
    command
        .arg("dev")
        .env("DATABASE_URL", format!("{server}/{base}"))
        .env_remove("KAFKA_BROKERS")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("SAGAFLOW_BROKER_PORT", broker_port.to_string())
        .env("SAGAFLOW_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env(
            "SIMULATED_PROVIDER_ADDR",
            format!("127.0.0.1:{provider_port}"),
        );
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let child = command
        .stdout(stdout())
        .stderr(stderr())
        .kill_on_drop(true)
        .spawn()
        .expect("start sagaflow dev");
    let child = Child(child);
    let base_url = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::new();
    wait::until(
        "sagaflow dev to be ready",
        Duration::from_secs(60),
        || async {
            let response = http
                .get(format!("{base_url}/health/ready"))
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        },
    )
    .await;
    (child, base_url, format!("127.0.0.1:{broker_port}"))
}

/// Place an order that is approved and one whose payment is declined, and wait until both are
/// final.
async fn approve_one_order_and_reject_another(base_url: &str, timeout: Duration) {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for method in ["pm_card_visa", "pm_card_chargeDeclined"] {
        let response = http
            .post(format!("{base_url}/orders"))
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&order_body(&[("SKU-1", 1, 999)], method))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        ids.push(body["order_id"].as_str().unwrap().to_string());
    }
    for (id, expected) in ids.iter().zip(["APPROVED", "REJECTED"]) {
        let status = wait::until(&format!("order {id} to finish"), timeout, || async {
            let order: Value = http
                .get(format!("{base_url}/orders/{id}"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let status = order["status"].as_str()?.to_string();
            (status != "PENDING").then_some(status)
        })
        .await;
        assert_eq!(status, expected, "order {id}");
    }
}

#[tokio::test]
async fn sagaflow_dev_runs_the_platform_in_one_process() {
    let (_child, base_url) = start_dev(&[]).await;
    let http = reqwest::Client::new();

    approve_one_order_and_reject_another(&base_url, Duration::from_secs(10)).await;
    let metrics = http
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "outbox_published_total",
        "outbox_backlog",
        "consumer_messages_total",
        "sagas{",
        "http_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "/metrics exposes {name}");
    }
}

/// A log line without its colours (the ANSI escapes of a terminal's log format).
fn plain(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// `sagaflow dev` after some orders, stopped as a terminal (SIGINT) or a container runtime
/// (SIGTERM) stops it: it stops within 10 s, with success, and quietly — its embedded broker
/// stops after the platform's clients, so none of them logs its loss (AllBrokersDown) nor
/// waits for it.
async fn sagaflow_dev_stops_quietly_and_promptly_on(signal: &str) {
    let (mut child, base_url, output, readers) = start_dev_capturing_output().await;
    approve_one_order_and_reject_another(&base_url, Duration::from_secs(30)).await;

    let pid = child.0.id().expect("sagaflow dev runs").to_string();
    let sent = Instant::now();
    let kill = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("run kill");
    assert!(kill.success(), "kill -{signal} {pid}");
    let status = tokio::time::timeout(Duration::from_secs(10), child.0.wait())
        .await
        .unwrap_or_else(|_| panic!("sagaflow dev still runs 10 s after SIG{signal}"))
        .expect("wait for sagaflow dev");
    let took = sent.elapsed();
    // Its pipes close as it exits (nothing else holds them).
    tokio::time::timeout(Duration::from_secs(5), readers)
        .await
        .expect("the output ends with the process")
        .unwrap();
    eprintln!("sagaflow dev exited ({status}) {took:?} after SIG{signal}");

    let lines: Vec<String> = output.lock().unwrap().iter().map(|l| plain(l)).collect();
    let everything = lines.join("\n");
    assert!(
        status.success(),
        "sagaflow dev exits with success after SIG{signal}, not {status}:\n{everything}"
    );
    let requested = lines
        .iter()
        .position(|l| l.contains("shutdown requested"))
        .unwrap_or_else(|| panic!("sagaflow dev logs the SIG{signal}:\n{everything}"));
    let after = &lines[requested..];
    let loud: Vec<&String> = after
        .iter()
        .filter(|l| {
            l.split_whitespace().any(|word| word == "ERROR") || l.contains("AllBrokersDown")
        })
        .collect();
    assert!(
        loud.is_empty(),
        "no error is logged by a normal stop, yet:\n{}\n\nthe whole output:\n{everything}",
        loud.iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        after.iter().any(|l| l.contains("sagaflow dev stopped")),
        "sagaflow dev says it stopped:\n{everything}"
    );
}

#[tokio::test]
async fn sagaflow_dev_stops_quietly_and_promptly_on_sigterm() {
    sagaflow_dev_stops_quietly_and_promptly_on("TERM").await;
}

#[tokio::test]
async fn sagaflow_dev_stops_quietly_and_promptly_on_sigint() {
    sagaflow_dev_stops_quietly_and_promptly_on("INT").await;
}

#[tokio::test]
async fn the_trace_id_of_the_post_is_on_every_message_of_the_saga() {
    let _broker = broker_lock().read().await;
    let app = spawn_platform(Options::default()).await;
    app.set_stock("SKU-T", 5).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .http
        .post(format!("{}/orders", app.base_url))
        .header("Idempotency-Key", "trace-1")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&order_body(&[("SKU-T", 1, 100)], "pm_card_visa"))
        .send()
        .await
        .unwrap();
    let order: Value = response.json().await.unwrap();
    let id = Uuid::parse_str(order["order_id"].as_str().unwrap()).unwrap();
    app.saga_terminal(id, Duration::from_secs(60)).await;
    wait::until("the notification", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE order_id = $1")
            .bind(id)
            .fetch_one(&app.pools.notification)
            .await
            .unwrap();
        (n == 1).then_some(())
    })
    .await;
    let mut types = Vec::new();
    for topic in topics::ALL {
        for record in read_all(&app.kafka, topic).await {
            if record.key.as_deref() != Some(&id.to_string()) {
                continue;
            }
            let traceparent = record
                .header(header_names::TRACEPARENT)
                .expect("traceparent header");
            assert!(
                traceparent.contains(trace),
                "{topic}: {traceparent} continues the POST's trace"
            );
            types.push(record.header(header_names::TYPE).unwrap());
        }
    }
    types.sort();
    assert_eq!(
        types,
        [
            "ApproveOrder",
            "AuthorizePayment",
            "NotificationSent",
            "OrderApproved",
            "OrderPlaced",
            "PaymentAuthorized",
            "ReserveStock",
            "StockReserved"
        ],
        "every message of the saga"
    );
    app.stop().await;
}

/// A span as an OTLP collector received it.
#[derive(Debug, Clone)]
struct ExportedSpan {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
}

/// A minimal OTLP/HTTP trace collector (`POST /v1/traces`, protobuf) on a free port.
async fn start_collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<ExportedSpan>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                let mut sink = sink.lock().unwrap();
                for span in request
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .flat_map(|s| &s.spans)
                {
                    sink.push(ExportedSpan {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name.clone(),
                    });
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn an_orders_spans_are_exported_over_otlp_as_one_connected_trace() {
    let (collector, spans) = start_collector().await;
    let (_child, base_url) = start_dev(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string()),
    ])
    .await;
    let http = reqwest::Client::new();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let response = http
        .post(format!("{base_url}/orders"))
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .json(&order_body(&[("SKU-1", 1, 999)], "pm_card_visa"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answered = response
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        answered.contains(trace),
        "the response continues the trace: {answered}"
    );

    // Every hop of the saga: the request, then one consumer span per message of it.
    let mut expected = vec!["POST /orders".to_string()];
    for topic in [
        topics::ORDERS_EVENTS,
        topics::INVENTORY_COMMANDS,
        topics::INVENTORY_EVENTS,
        topics::PAYMENT_COMMANDS,
        topics::PAYMENT_EVENTS,
        topics::ORDERS_COMMANDS,
    ] {
        expected.push(format!("{topic} process"));
    }
    let of_trace = wait::until(
        "the saga's spans at the collector",
        Duration::from_secs(30),
        || async {
            let of_trace: Vec<ExportedSpan> = spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace)
                .cloned()
                .collect();
            expected
                .iter()
                .all(|name| of_trace.iter().any(|s| &s.name == name))
                .then_some(of_trace)
        },
    )
    .await;
    // One connected trace: the request span is the caller's child, and every other span's
    // parent is a span of the same trace (no hop started a new one or lost its parent).
    let root = of_trace.iter().find(|s| s.name == "POST /orders").unwrap();
    assert_eq!(
        root.parent_span_id, caller_span,
        "POST /orders continues the caller's span"
    );
    for span in &of_trace {
        if span.span_id == root.span_id {
            continue;
        }
        assert!(
            of_trace.iter().any(|p| p.span_id == span.parent_span_id),
            "span {:?} has its parent {} in the trace",
            span.name,
            span.parent_span_id
        );
    }
}

/// What a new user does first: watch a topic with the kcat their distribution ships. Debian 12's
/// kcat 1.7.1 is linked to librdkafka 2.0.2 (installed by `scripts/test-infra.sh prereqs`),
/// whose ApiVersions parser the embedded broker used to break (vendor/README.md).
#[tokio::test]
async fn debians_kcat_reads_orders_events_from_sagaflow_dev() {
    let version = std::process::Command::new("kcat").arg("-V").output();
    let Ok(version) = version else {
        panic!("kcat is not installed: apt-get install kcat (scripts/test-infra.sh prereqs does)");
    };
    eprintln!(
        "{}",
        String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    let (_child, base_url, broker) = start_dev_with_broker(&[]).await;
    let response = reqwest::Client::new()
        .post(format!("{base_url}/orders"))
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .json(&order_body(&[("SKU-1", 1, 999)], "pm_card_visa"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let order: Value = response.json().await.unwrap();
    let order_id = order["order_id"].as_str().unwrap().to_string();

    // The README's command, as written.
    let line = wait::until(
        "kcat to show the order's OrderPlaced",
        Duration::from_secs(30),
        || async {
            let output = tokio::process::Command::new("timeout")
                .args([
                    "20",
                    "kcat",
                    "-b",
                    &broker,
                    "-C",
                    "-t",
                    topics::ORDERS_EVENTS,
                ])
                .args(["-o", "beginning", "-e", "-f", "%k %h\n"])
                .output()
                .await
                .expect("run kcat");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            if !output.status.success() {
                eprintln!("kcat: {}", String::from_utf8_lossy(&output.stderr));
            }
            stdout
                .lines()
                .find(|l| l.starts_with(&order_id) && l.contains("ce_type=OrderPlaced"))
                .map(str::to_string)
        },
    )
    .await;
    assert!(
        line.contains(&format!("{}={order_id}", header_names::CORRELATION_ID)),
        "{line}"
    );

    // A consumer group, as `kcat -G` runs one, resumes from its committed offsets.
    let group = format!("kcat-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let consumed = tokio::process::Command::new("timeout")
        .args(["30", "kcat", "-b", &broker, "-G", &group, "-X"])
        .args([
            "auto.offset.reset=earliest",
            "-e",
            "-f",
            "%k %h\n",
            topics::ORDERS_EVENTS,
        ])
        .output()
        .await
        .expect("run kcat -G");
    let stdout = String::from_utf8_lossy(&consumed.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&order_id) && l.contains("ce_type=OrderPlaced")),
        "kcat -G read: {stdout}\n{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
}
