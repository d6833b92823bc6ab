//! Every schema this build knows: the current version of each message and the released one.
//!
//! A writer names its schema in the `ce_dataschema` header as `<full name>@<rabin fingerprint>`;
//! [`by_reference`] finds that exact schema so a reader can resolve old data against the
//! schema it was compiled with.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;

/// The schemas the code is written against (`schemas/avro/*.avsc`).
pub const CURRENT_SOURCES: &[(&str, &str)] = &[
    ("OrderPlaced", include_str!("../avro/OrderPlaced.avsc")),
    ("OrderApproved", include_str!("../avro/OrderApproved.avsc")),
    ("OrderRejected", include_str!("../avro/OrderRejected.avsc")),
    ("StockReserved", include_str!("../avro/StockReserved.avsc")),
    ("StockRejected", include_str!("../avro/StockRejected.avsc")),
    ("StockReleased", include_str!("../avro/StockReleased.avsc")),
    (
        "PaymentAuthorized",
        include_str!("../avro/PaymentAuthorized.avsc"),
    ),
    (
        "PaymentDeclined",
        include_str!("../avro/PaymentDeclined.avsc"),
    ),
    (
        "PaymentRefunded",
        include_str!("../avro/PaymentRefunded.avsc"),
    ),
    (
        "NotificationSent",
        include_str!("../avro/NotificationSent.avsc"),
    ),
    ("ReserveStock", include_str!("../avro/ReserveStock.avsc")),
    ("ReleaseStock", include_str!("../avro/ReleaseStock.avsc")),
    (
        "AuthorizePayment",
        include_str!("../avro/AuthorizePayment.avsc"),
    ),
    ("RefundPayment", include_str!("../avro/RefundPayment.avsc")),
    ("ApproveOrder", include_str!("../avro/ApproveOrder.avsc")),
    ("RejectOrder", include_str!("../avro/RejectOrder.avsc")),
];

/// The last released version of each schema (`schemas/avro/released/*.avsc`).
pub const RELEASED_SOURCES: &[(&str, &str)] = &[
    (
        "OrderPlaced",
        include_str!("../avro/released/OrderPlaced.avsc"),
    ),
    (
        "OrderApproved",
        include_str!("../avro/released/OrderApproved.avsc"),
    ),
    (
        "OrderRejected",
        include_str!("../avro/released/OrderRejected.avsc"),
    ),
    (
        "StockReserved",
        include_str!("../avro/released/StockReserved.avsc"),
    ),
    (
        "StockRejected",
        include_str!("../avro/released/StockRejected.avsc"),
    ),
    (
        "StockReleased",
        include_str!("../avro/released/StockReleased.avsc"),
    ),
    (
        "PaymentAuthorized",
        include_str!("../avro/released/PaymentAuthorized.avsc"),
    ),
    (
        "PaymentDeclined",
        include_str!("../avro/released/PaymentDeclined.avsc"),
    ),
    (
        "PaymentRefunded",
        include_str!("../avro/released/PaymentRefunded.avsc"),
    ),
    (
        "NotificationSent",
        include_str!("../avro/released/NotificationSent.avsc"),
    ),
    (
        "ReserveStock",
        include_str!("../avro/released/ReserveStock.avsc"),
    ),
    (
        "ReleaseStock",
        include_str!("../avro/released/ReleaseStock.avsc"),
    ),
    (
        "AuthorizePayment",
        include_str!("../avro/released/AuthorizePayment.avsc"),
    ),
    (
        "RefundPayment",
        include_str!("../avro/released/RefundPayment.avsc"),
    ),
    (
        "ApproveOrder",
        include_str!("../avro/released/ApproveOrder.avsc"),
    ),
    (
        "RejectOrder",
        include_str!("../avro/released/RejectOrder.avsc"),
    ),
];

/// One parsed schema and the reference that names it in headers.
#[derive(Debug)]
pub struct Entry {
    pub message_type: &'static str,
    pub schema: Schema,
    pub reference: String,
}

fn parse(sources: &'static [(&'static str, &'static str)]) -> Vec<Entry> {
    sources
        .iter()
        .map(|(message_type, text)| {
            // The .avsc files are compiled in and covered by unit tests: a parse failure is a
            // build defect, not a runtime condition.
            let schema = Schema::parse_str(text)
                .unwrap_or_else(|e| panic!("schemas/avro/{message_type}.avsc: {e}"));
            Entry {
                message_type,
                reference: reference_of(&schema),
                schema,
            }
        })
        .collect()
}

/// `<full name>@<Rabin fingerprint of the canonical form>`.
pub fn reference_of(schema: &Schema) -> String {
    let name = match schema {
        Schema::Record(record) => record.name.fullname(None),
        other => format!("{other:?}"),
    };
    format!("{name}@{}", schema.fingerprint::<Rabin>())
}

static CURRENT: LazyLock<Vec<Entry>> = LazyLock::new(|| parse(CURRENT_SOURCES));
static RELEASED: LazyLock<Vec<Entry>> = LazyLock::new(|| parse(RELEASED_SOURCES));
static BY_REFERENCE: LazyLock<HashMap<&'static str, &'static Entry>> = LazyLock::new(|| {
    CURRENT
        .iter()
        .chain(RELEASED.iter())
        .map(|entry| (entry.reference.as_str(), entry))
        .collect()
});

/// The current schema of a message type.
pub fn current(message_type: &str) -> Option<&'static Entry> {
    CURRENT.iter().find(|e| e.message_type == message_type)
}

/// Every current schema.
pub fn all_current() -> &'static [Entry] {
    &CURRENT
}

/// Every released schema.
pub fn all_released() -> &'static [Entry] {
    &RELEASED
}

/// The schema a header reference names, current or released.
pub fn by_reference(reference: &str) -> Option<&'static Entry> {
    BY_REFERENCE.get(reference).copied()
}
