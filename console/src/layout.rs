//! The frame of every console page (navigation, a little inline CSS: no external asset, so it
//! works offline) and small rendering helpers shared by the pages.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
nav{background:#1d2430;padding:.6em 1em}nav a{color:#e8ecf2;margin-right:1.2em;text-decoration:none;font-weight:600}
nav form{display:inline;float:right}nav button{background:none;border:0;color:#aab4c3;cursor:pointer}
main{padding:1em 1.5em}h1{font-size:1.4em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;margin:.4em 0}th,td{border:1px solid #d8dde5;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef1f5}pre{margin:0;white-space:pre-wrap;font-size:12px;max-width:60em}
.state{font-weight:600}.APPROVED{color:#17803d}.REJECTED,.FAILED{color:#b42318}.counts a{margin-right:1em}
.note{color:#5b6676}.error{color:#b42318;font-weight:600}.flash{background:#e7f6ec;border:1px solid #9bd3ae;padding:.5em;margin:.5em 0}
form.filter input,form.filter select{margin-right:.8em}details summary{cursor:pointer}
"#;

/// A whole page: `title` and `body` inside the console's frame.
pub fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · Sagaflow console" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav {
                    a href="/console/sagas" { "Sagas" }
                    a href="/console/dead-letters" { "Dead letters" }
                    a href="/console/outbox" { "Parked outbox rows" }
                    a href="/console/health" { "Health" }
                    form method="post" action="/console/logout" { button type="submit" { "Log out" } }
                }
                main { (body) }
            }
        }
    }
}

/// A point in time, to the millisecond, in UTC.
pub fn time(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

/// An optional point in time, `-` when absent.
pub fn maybe_time(at: Option<&DateTime<Utc>>) -> String {
    at.map_or_else(|| "-".to_string(), time)
}

/// A duration in words an operator reads at a glance: `42 s`, `3 min`, `5 h`, `2 d`.
pub fn age(duration: chrono::Duration) -> String {
    let secs = duration.num_seconds().max(0);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86400),
    }
}

/// The note a section shows when its source is not configured.
pub fn not_configured(what: &str, variable: &str) -> Markup {
    html! { p.note.not-configured { (what) " is not configured (set " code { (variable) } ")." } }
}

/// The note a section shows when its source failed (the cause goes to the log).
pub fn failed(what: &str, error: &anyhow::Error) -> Markup {
    tracing::warn!(error = format!("{error:#}"), "console: {what} failed");
    html! { p.error { (what) " could not be read; the cause is in the service's log." } }
}

/// A JSON value, pretty-printed.
pub fn json(value: &serde_json::Value) -> Markup {
    html! { pre { (serde_json::to_string_pretty(value).unwrap_or_default()) } }
}

/// A small bar chart as inline SVG: one bar per `(label, value)`, the largest full height.
pub fn bar_chart(points: &[(String, i64)], unit: &str) -> Markup {
    let (width, height, bar) = (600_i64, 120_i64, 600 / points.len().max(1) as i64);
    let max = points.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    html! {
        svg.chart width=(width) height=(height + 20) viewBox={"0 0 " (width) " " (height + 20)}
            role="img" aria-label={"throughput, " (unit)} {
            rect x="0" y="0" width=(width) height=(height) fill="#fff" stroke="#d8dde5" {}
            @for (i, (label, value)) in points.iter().enumerate() {
                @let h = value * (height - 10) / max;
                rect x=(i as i64 * bar + 1) y=(height - h) width=(bar - 2) height=(h) fill="#3b6fd8" {
                    title { (label) ": " (value) " " (unit) }
                }
            }
            text x="2" y=(height + 15) font-size="11" { (points.first().map_or("", |p| p.0.as_str())) }
            text x=(width - 2) y=(height + 15) font-size="11" text-anchor="end" { (points.last().map_or("", |p| p.0.as_str())) }
            text x="4" y="12" font-size="11" { "max " (max) " " (unit) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(chrono::Duration::seconds(42)), "42 s");
        assert_eq!(age(chrono::Duration::seconds(185)), "3 min");
        assert_eq!(age(chrono::Duration::hours(5)), "5 h");
        assert_eq!(age(chrono::Duration::days(2)), "2 d");
        assert_eq!(age(chrono::Duration::seconds(-3)), "0 s");
    }

    #[test]
    fn data_is_escaped() {
        let markup = page("x", html! { p { ("<script>alert(1)</script>") } }).into_string();
        assert!(!markup.contains("<script>alert"), "{markup}");
        assert!(markup.contains("&lt;script&gt;"));
    }

    #[test]
    fn the_chart_has_one_bar_per_point() {
        let points: Vec<_> = (0..10).map(|i| (format!("t{i}"), i)).collect();
        let svg = bar_chart(&points, "msg").into_string();
        assert_eq!(svg.matches("<rect").count(), 11, "frame + 10 bars");
    }
}
