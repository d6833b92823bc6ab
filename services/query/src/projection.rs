//! The projections: how one event changes the read models. The live consumer and replay call
//! the same [`apply`], on the live tables or on their `_rebuild` shadows.
//!
//! Guarantees, by construction (they hold without the inbox, so a replay that reads a topic
//! with duplicates builds the same rows):
//! - **Idempotent**: applying an event twice changes nothing. Timeline rows are keyed by
//!   message id, stock movements by (order, SKU, kind), OrderPlaced facts are immutable.
//! - **Order-safe**: any arrival order of an order's events gives the same rows. The status
//!   only moves forward by (rank, event time, message id) — a terminal status never goes back
//!   to PENDING; counters are sums; "last event" columns take the maximum.
//!
//! The one event a projection refuses is an order in a currency whose minor units it does not
//! know (it could not render the total): dead-lettered, and redriven once the currency is
//! configured (`QUERY_CURRENCY_MINOR_UNITS=XTS=2`).

use sagaflow_schemas::MessageType;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sagaflow_schemas::{Envelope, Message, StockLine, topics};
use sqlx::PgConnection;

/// A read model that can be replayed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    /// Order view (status, items, totals, timeline) and customer history.
    Orders,
    /// Reserved stock per SKU.
    Stock,
}

impl Projection {
    pub const ALL: [Projection; 2] = [Projection::Orders, Projection::Stock];

    pub fn name(self) -> &'static str {
        match self {
            Projection::Orders => "orders",
            Projection::Stock => "stock",
        }
    }

    /// `orders`, `stock`, or `all`.
    pub fn parse_selection(name: &str) -> Result<Vec<Projection>, String> {
        match name {
            "all" => Ok(Projection::ALL.to_vec()),
            other => Projection::ALL
                .into_iter()
                .find(|p| p.name() == other)
                .map(|p| vec![p])
                .ok_or_else(|| format!("unknown projection {other:?} (orders, stock or all)")),
        }
    }

    /// The topics it is built from.
    pub fn topics(self) -> &'static [&'static str] {
        match self {
            Projection::Orders => &[
                topics::ORDERS_EVENTS,
                topics::INVENTORY_EVENTS,
                topics::PAYMENT_EVENTS,
                topics::NOTIFICATION_EVENTS,
            ],
            Projection::Stock => &[topics::INVENTORY_EVENTS],
        }
    }

    /// Its tables, in the order [`apply`] writes them (locks are taken in this order too).
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Projection::Orders => &["orders_view", "order_timeline"],
            Projection::Stock => &["stock_movements", "stock_view"],
        }
    }

    /// Each table's row as a checksum sees it: every column that an event determines. The
    /// timeline's `applied_at` is when the row was written, which a rebuild cannot repeat.
    pub(crate) fn checksummed_row(table: &str) -> &'static str {
        match table {
            "order_timeline" => "(t.message_id, t.order_id, t.step, t.source, t.at, t.detail)",
            _ => "t",
        }
    }

    /// Each table's key, for checksums.
    pub(crate) fn order_by(table: &str) -> &'static str {
        match table {
            "orders_view" => "order_id",
            "order_timeline" => "message_id",
            "stock_movements" => "order_id, sku, kind",
            _ => "sku",
        }
    }

    pub fn accepts(self, message_type: MessageType) -> bool {
        match self {
            Projection::Orders => matches!(
                message_type,
                MessageType::OrderPlaced
                    | MessageType::OrderApproved
                    | MessageType::OrderRejected
                    | MessageType::StockReserved
                    | MessageType::StockRejected
                    | MessageType::StockReleased
                    | MessageType::PaymentAuthorized
                    | MessageType::PaymentDeclined
                    | MessageType::PaymentRefunded
                    | MessageType::NotificationSent
            ),
            Projection::Stock => matches!(
                message_type,
                MessageType::StockReserved | MessageType::StockReleased
            ),
        }
    }
}

/// Which set of tables to write: the live ones or a replay's shadows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Live,
    Rebuild,
}

impl Target {
    pub fn table(self, name: &str) -> String {
        match self {
            Target::Live => name.to_string(),
            Target::Rebuild => format!("{name}_rebuild"),
        }
    }
}

/// What the projections need to know beyond the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Minor units of each currency the order view can total.
    pub minor_units: BTreeMap<String, u32>,
}

impl Default for Rules {
    fn default() -> Self {
        let known = [
            ("EUR", 2),
            ("USD", 2),
            ("GBP", 2),
            ("CHF", 2),
            ("SEK", 2),
            ("NOK", 2),
            ("DKK", 2),
            ("PLN", 2),
            ("CZK", 2),
            ("CAD", 2),
            ("AUD", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("KWD", 3),
            ("BHD", 3),
        ];
        Rules {
            minor_units: known
                .into_iter()
                .map(|(code, units)| (code.to_string(), units))
                .collect(),
        }
    }
}

/// The query service's settings, read by its binaries (clap: flags or the environment).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct QueryConfig {
    /// Currencies beyond the built-in ones the order view can total, `CODE=minor_units`
    /// comma separated (e.g. `XTS=2,CLF=4`).
    #[arg(
        long = "currency-minor-units",
        env = "QUERY_CURRENCY_MINOR_UNITS",
        default_value = ""
    )]
    pub currency_minor_units: String,
}

impl QueryConfig {
    /// The default rules plus the configured currencies.
    pub fn rules(&self) -> Result<Rules, String> {
        let mut rules = Rules::default();
        rules.add_currencies(&self.currency_minor_units)?;
        Ok(rules)
    }
}

impl Rules {
    /// Add `CODE=units` pairs, comma separated.
    pub fn add_currencies(&mut self, spec: &str) -> Result<(), String> {
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (code, units) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?}: expected CODE=minor_units"))?;
            let units: u32 = units
                .trim()
                .parse()
                .ok()
                .filter(|u| *u <= 6)
                .ok_or_else(|| format!("{pair:?}: minor units must be 0..=6"))?;
            self.minor_units.insert(code.trim().to_string(), units);
        }
        Ok(())
    }
}

/// Why an event was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The event cannot be applied with the current rules (dead-letter it).
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Status precedence: PENDING < terminal. Terminal states tie on rank; the later event wins
/// (deterministically, by time then message id).
fn status_rank(status: &str) -> i32 {
    match status {
        "PENDING" => 1,
        "APPROVED" | "REJECTED" => 2,
        _ => 0,
    }
}

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// Apply one event to `projection` in `target`'s tables, inside the caller's transaction.
/// Events the projection does not use are ignored.
pub async fn apply(
    conn: &mut PgConnection,
    target: Target,
    projection: Projection,
    rules: &Rules,
    envelope: &Envelope,
    message: &Message,
) -> Result<(), ProjectionError> {
    if !projection.accepts(message.kind()) {
        return Ok(());
    }
    match projection {
        Projection::Orders => apply_orders(conn, target, rules, envelope, message).await,
        Projection::Stock => apply_stock(conn, target, envelope, message).await,
    }
}

async fn apply_orders(
    conn: &mut PgConnection,
    target: Target,
    rules: &Rules,
    envelope: &Envelope,
    message: &Message,
) -> Result<(), ProjectionError> {
    let orders = target.table("orders_view");
    let timeline = target.table("order_timeline");
    let order_id = message.order_id();
    let at = envelope.time;
    // Validate before writing anything, so a rejected event leaves no trace.
    let placed_units = match message {
        Message::OrderPlaced(placed) => {
            Some(*rules.minor_units.get(&placed.currency).ok_or_else(|| {
                ProjectionError::Rejected(format!(
                    "currency {} has no configured minor units (set QUERY_CURRENCY_MINOR_UNITS)",
                    placed.currency
                ))
            })? as i32)
        }
        _ => None,
    };
    // What the event says about the order: its facts (OrderPlaced), its customer (the
    // verdicts carry it too), its status.
    let (placed, customer_id, status) = match message {
        Message::OrderPlaced(placed) => (
            Some(placed),
            Some(placed.customer_id),
            Some(("PENDING", None)),
        ),
        Message::OrderApproved(approved) => {
            (None, Some(approved.customer_id), Some(("APPROVED", None)))
        }
        Message::OrderRejected(rejected) => (
            None,
            Some(rejected.customer_id),
            Some(("REJECTED", Some(rejected.reason.as_str()))),
        ),
        _ => (None, None, None),
    };
    let (status, reason) = status.unzip();
    let detail = serde_json::to_value(message).unwrap_or_default();
    let forward = "($9 IS NOT NULL AND (v.status_rank, v.status_at, v.status_event_id)
                   < (EXCLUDED.status_rank, EXCLUDED.status_at, EXCLUDED.status_event_id))";
    // One statement (one round trip per event and projection): the view row is inserted or
    // updated as the separate steps would — last event time the maximum; OrderPlaced's facts
    // written as they are (immutable); a verdict's customer only where none is known; the
    // status only forward, by (rank, time, message id), its reason with it — and the
    // timeline row is added beside it.
    sqlx::query(sql(format!(
        "WITH viewed AS (
             INSERT INTO {orders} AS v (order_id, last_event_at, customer_id, items, total_cents,
                                         currency, minor_units, placed_at, status, status_rank,
                                         status_at, status_event_id, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, COALESCE($9, 'UNKNOWN'), $10,
                     CASE WHEN $9 IS NULL THEN '-infinity' ELSE $2 END,
                     CASE WHEN $9 IS NULL THEN '00000000-0000-0000-0000-000000000000' ELSE $11 END,
                     $12)
             ON CONFLICT (order_id) DO UPDATE SET
                last_event_at = GREATEST(v.last_event_at, EXCLUDED.last_event_at),
                customer_id = CASE WHEN $13 THEN EXCLUDED.customer_id
                                   ELSE COALESCE(v.customer_id, EXCLUDED.customer_id) END,
                items = CASE WHEN $13 THEN EXCLUDED.items ELSE v.items END,
                total_cents = CASE WHEN $13 THEN EXCLUDED.total_cents ELSE v.total_cents END,
                currency = CASE WHEN $13 THEN EXCLUDED.currency ELSE v.currency END,
                minor_units = CASE WHEN $13 THEN EXCLUDED.minor_units ELSE v.minor_units END,
                placed_at = CASE WHEN $13 THEN EXCLUDED.placed_at ELSE v.placed_at END,
                status = CASE WHEN {forward} THEN EXCLUDED.status ELSE v.status END,
                status_rank = CASE WHEN {forward} THEN EXCLUDED.status_rank ELSE v.status_rank END,
                status_at = CASE WHEN {forward} THEN EXCLUDED.status_at ELSE v.status_at END,
                status_event_id = CASE WHEN {forward} THEN EXCLUDED.status_event_id ELSE v.status_event_id END,
                reason = CASE WHEN {forward} THEN EXCLUDED.reason ELSE v.reason END)
         INSERT INTO {timeline} (message_id, order_id, step, source, at, detail)
         VALUES ($11, $1, $14, $15, $2, $16) ON CONFLICT (message_id) DO NOTHING"
    )))
    .bind(order_id)
    .bind(at)
    .bind(customer_id)
    .bind(placed.map(|p| serde_json::to_value(&p.items).unwrap_or_default()))
    .bind(placed.map(|p| p.total_cents))
    .bind(placed.map(|p| p.currency.as_str()))
    .bind(placed_units)
    .bind(placed.and_then(|p| millis(p.placed_at)))
    .bind(status)
    .bind(status.map_or(0, status_rank))
    .bind(envelope.message_id)
    .bind(reason.flatten())
    .bind(placed.is_some())
    .bind(message.message_type())
    .bind(&envelope.source)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn apply_stock(
    conn: &mut PgConnection,
    target: Target,
    envelope: &Envelope,
    message: &Message,
) -> Result<(), ProjectionError> {
    let (kind, lines, order_id) = match message {
        Message::StockReserved(e) => ("reserved", &e.lines, e.order_id),
        Message::StockReleased(e) => ("released", &e.lines, e.order_id),
        _ => return Ok(()),
    };
    let movements = target.table("stock_movements");
    let view = target.table("stock_view");
    for (sku, quantity) in per_sku(lines) {
        let inserted = sqlx::query(sql(format!(
            "INSERT INTO {movements} (order_id, sku, kind, quantity, at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING"
        )))
        .bind(order_id)
        .bind(&sku)
        .bind(kind)
        .bind(quantity)
        .bind(envelope.time)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            continue; // this order already moved this SKU this way
        }
        let (held, reserved, released) = if kind == "reserved" {
            (quantity, quantity, 0)
        } else {
            (-quantity, 0, quantity)
        };
        sqlx::query(sql(format!(
            "INSERT INTO {view} (sku, reserved, reserved_total, released_total, last_event_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (sku) DO UPDATE SET
                reserved = {view}.reserved + EXCLUDED.reserved,
                reserved_total = {view}.reserved_total + EXCLUDED.reserved_total,
                released_total = {view}.released_total + EXCLUDED.released_total,
                last_event_at = GREATEST({view}.last_event_at, EXCLUDED.last_event_at)"
        )))
        .bind(&sku)
        .bind(i64::from(held))
        .bind(i64::from(reserved))
        .bind(i64::from(released))
        .bind(envelope.time)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Quantities per SKU (an order may list a SKU on several lines).
/// The rows applying `message` may lock that another lane's events lock too: its order's
/// (every projection keys them by order id) and, for stock events, each SKU's stock row.
pub fn lock_keys(message: &Message) -> Vec<String> {
    let mut keys = vec![message.order_id().to_string()];
    if let Message::StockReserved(sagaflow_schemas::StockReserved { lines, .. })
    | Message::StockReleased(sagaflow_schemas::StockReleased { lines, .. }) = message
    {
        keys.extend(lines.iter().map(|line| format!("sku:{}", line.sku)));
    }
    keys
}

fn per_sku(lines: &[StockLine]) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    for line in lines {
        *out.entry(line.sku.clone()).or_insert(0) += line.quantity;
    }
    out
}

fn millis(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_status_outranks_pending_whatever_the_arrival_order() {
        assert!(status_rank("APPROVED") > status_rank("PENDING"));
        assert!(status_rank("REJECTED") > status_rank("PENDING"));
        assert!(status_rank("PENDING") > status_rank("UNKNOWN"));
    }

    #[test]
    fn lines_of_one_sku_are_summed() {
        let lines = vec![
            StockLine {
                sku: "A".into(),
                quantity: 2,
            },
            StockLine {
                sku: "B".into(),
                quantity: 1,
            },
            StockLine {
                sku: "A".into(),
                quantity: 3,
            },
        ];
        let summed = per_sku(&lines);
        assert_eq!(summed["A"], 5);
        assert_eq!(summed["B"], 1);
    }

    #[test]
    fn projections_parse_and_all_selects_both() {
        assert_eq!(
            Projection::parse_selection("all").unwrap(),
            Projection::ALL.to_vec()
        );
        assert_eq!(
            Projection::parse_selection("stock").unwrap(),
            vec![Projection::Stock]
        );
        assert!(Projection::parse_selection("nope").is_err());
    }

    #[test]
    fn extra_currencies_are_configurable_and_validated() {
        let mut rules = Rules::default();
        assert!(!rules.minor_units.contains_key("XTS"));
        rules.add_currencies("XTS=2, CLF=4").unwrap();
        assert_eq!(rules.minor_units["XTS"], 2);
        assert_eq!(rules.minor_units["CLF"], 4);
        assert!(rules.add_currencies("XTS").is_err());
        assert!(rules.add_currencies("XTS=9").is_err());
    }
}
