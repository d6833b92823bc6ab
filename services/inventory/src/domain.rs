//! The reservation rules, without I/O or clock: given the stock rows and the order's recorded
//! reservation, what a ReserveStock or ReleaseStock does and what it answers.
//!
//! Rules:
//! - A reservation is all lines or none. Lines of one SKU are merged first, so an order
//!   listing a SKU twice needs the sum to be available.
//! - An order is decided once. Whatever its recorded outcome, a later ReserveStock only
//!   re-announces it; in particular an order released before it was reserved (compensation
//!   overtook the command) is never reserved.
//! - A release returns exactly what the order holds, once.

use std::collections::BTreeMap;

use sagaflow_schemas::{Message, StockLine, StockRejected, StockReleased, StockReserved};
use uuid::Uuid;

/// The reason announced when a ReserveStock arrives for an order already released.
pub const RELEASED_REASON: &str = "released";

/// Longest SKU accepted.
pub const MAX_SKU_LEN: usize = 64;

/// One SKU's quantities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRow {
    pub sku: String,
    pub available: i32,
    pub reserved: i32,
}

sagaflow_runtime::text_enum! {
    /// Where an order's reservation stands (`reservations.status`).
    pub enum Status("reservation status") {
        Reserved = "RESERVED",
        Released = "RELEASED",
        Rejected = "REJECTED",
    }
}

/// An order's recorded reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub status: Status,
    /// What is (or was) held, merged and sorted by SKU; empty for rejections and tombstones.
    pub lines: Vec<StockLine>,
    pub reason: Option<String>,
    /// When the first outcome was decided, in ms since the epoch.
    pub decided_at: i64,
}

/// What a ReserveStock does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every line fits: move these quantities (merged, sorted by SKU) from available to
    /// reserved and record the reservation.
    Reserve { lines: Vec<StockLine> },
    /// Something does not fit: record the rejection, touch no stock.
    Reject { reason: String },
    /// Decided before as reserved: announce it again, change nothing.
    AlreadyReserved {
        lines: Vec<StockLine>,
        reserved_at: i64,
    },
    /// Decided before as rejected: announce it again, change nothing.
    AlreadyRejected { reason: String, rejected_at: i64 },
    /// The order was released (possibly before anything was reserved): refuse, change nothing.
    AlreadyReleased,
}

impl Decision {
    /// A label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Reserve { .. } => "reserved",
            Decision::Reject { .. } => "rejected",
            Decision::AlreadyReserved { .. } | Decision::AlreadyRejected { .. } => "repeated",
            Decision::AlreadyReleased => "refused_released",
        }
    }
}

/// What a ReleaseStock does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The order holds these quantities: return them to available, mark it released.
    Return { lines: Vec<StockLine> },
    /// Nothing was ever decided for the order: record it as released with no lines, so a
    /// ReserveStock arriving later cannot reserve.
    Tombstone,
    /// Rejected or released already: nothing is held, change nothing.
    Nothing,
}

impl Release {
    /// The lines this release gives back (announced in StockReleased).
    pub fn returned(&self) -> &[StockLine] {
        match self {
            Release::Return { lines } => lines,
            Release::Tombstone | Release::Nothing => &[],
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Release::Return { .. } => "returned",
            Release::Tombstone => "tombstone",
            Release::Nothing => "nothing",
        }
    }
}

/// Decide a ReserveStock for `lines`, given the rows of their SKUs (unknown SKUs have none)
/// and the order's reservation, if any.
pub fn decide_reserve(
    stock: &[StockRow],
    existing: Option<&Reservation>,
    lines: &[StockLine],
) -> Decision {
    if let Some(existing) = existing {
        return match existing.status {
            Status::Reserved => Decision::AlreadyReserved {
                lines: existing.lines.clone(),
                reserved_at: existing.decided_at,
            },
            Status::Rejected => Decision::AlreadyRejected {
                reason: existing.reason.clone().unwrap_or_default(),
                rejected_at: existing.decided_at,
            },
            Status::Released => Decision::AlreadyReleased,
        };
    }
    let wanted = match merge_lines(lines) {
        Ok(wanted) => wanted,
        Err(reason) => return Decision::Reject { reason },
    };
    let problems: Vec<String> = wanted
        .iter()
        .filter_map(|line| match stock.iter().find(|row| row.sku == line.sku) {
            None => Some(format!("unknown SKU {}", line.sku)),
            Some(row) if row.available < line.quantity => Some(format!(
                "SKU {} short: requested {}, available {}",
                line.sku, line.quantity, row.available
            )),
            Some(_) => None,
        })
        .collect();
    if problems.is_empty() {
        Decision::Reserve { lines: wanted }
    } else {
        Decision::Reject {
            reason: problems.join("; "),
        }
    }
}

/// Decide a ReleaseStock given the order's reservation, if any.
pub fn decide_release(existing: Option<&Reservation>) -> Release {
    match existing {
        None => Release::Tombstone,
        Some(reservation) if reservation.status == Status::Reserved => Release::Return {
            lines: reservation.lines.clone(),
        },
        Some(_) => Release::Nothing,
    }
}

/// Merge lines of the same SKU and sort by SKU (the order stock rows are locked in).
/// Fails, naming the SKU, on a non-positive quantity or a total beyond `i32`; fails on no
/// lines at all, since an order that holds nothing cannot be fulfilled.
pub fn merge_lines(lines: &[StockLine]) -> Result<Vec<StockLine>, String> {
    if lines.is_empty() {
        return Err("no lines to reserve".to_string());
    }
    let mut merged: BTreeMap<&str, i32> = BTreeMap::new();
    for line in lines {
        if line.quantity <= 0 {
            return Err(format!(
                "SKU {}: quantity must be positive, got {}",
                line.sku, line.quantity
            ));
        }
        let total = merged.entry(&line.sku).or_insert(0);
        *total = total
            .checked_add(line.quantity)
            .ok_or_else(|| format!("SKU {}: total quantity is too large", line.sku))?;
    }
    Ok(merged
        .into_iter()
        .map(|(sku, quantity)| StockLine {
            sku: sku.to_string(),
            quantity,
        })
        .collect())
}

/// The distinct SKUs of `lines`, sorted: every transaction locks stock rows in this order,
/// so two reservations sharing SKUs wait for each other instead of deadlocking.
pub fn sorted_skus(lines: &[StockLine]) -> Vec<String> {
    let mut skus: Vec<String> = lines.iter().map(|line| line.sku.clone()).collect();
    skus.sort();
    skus.dedup();
    skus
}

/// The answer to a ReserveStock.
pub fn reserve_reply(order_id: Uuid, decision: &Decision, now_ms: i64) -> Message {
    match decision {
        Decision::Reserve { lines } => StockReserved {
            order_id,
            lines: lines.clone(),
            reserved_at: now_ms,
        }
        .into(),
        Decision::AlreadyReserved { lines, reserved_at } => StockReserved {
            order_id,
            lines: lines.clone(),
            reserved_at: *reserved_at,
        }
        .into(),
        Decision::Reject { reason } => StockRejected {
            order_id,
            reason: reason.clone(),
            rejected_at: now_ms,
        }
        .into(),
        Decision::AlreadyRejected {
            reason,
            rejected_at,
        } => StockRejected {
            order_id,
            reason: reason.clone(),
            rejected_at: *rejected_at,
        }
        .into(),
        Decision::AlreadyReleased => StockRejected {
            order_id,
            reason: RELEASED_REASON.to_string(),
            rejected_at: now_ms,
        }
        .into(),
    }
}

/// The answer to a ReleaseStock.
pub fn release_reply(order_id: Uuid, release: &Release, now_ms: i64) -> Message {
    StockReleased {
        order_id,
        lines: release.returned().to_vec(),
        released_at: now_ms,
    }
    .into()
}

/// Check a SKU: 1 to 64 characters of `A-Z a-z 0-9 . _ -` (safe in URLs, logs and keys).
pub fn validate_sku(sku: &str) -> Result<(), String> {
    if sku.is_empty() || sku.len() > MAX_SKU_LEN {
        return Err(format!("sku must be 1 to {MAX_SKU_LEN} characters long"));
    }
    if !sku
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("sku may contain only letters, digits, '.', '_' and '-'".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: i64 = 1_763_000_000_000;

    fn line(sku: &str, quantity: i32) -> StockLine {
        StockLine {
            sku: sku.into(),
            quantity,
        }
    }

    fn row(sku: &str, available: i32) -> StockRow {
        StockRow {
            sku: sku.into(),
            available,
            reserved: 0,
        }
    }

    fn recorded(status: Status, lines: Vec<StockLine>, reason: Option<&str>) -> Reservation {
        Reservation {
            status,
            lines,
            reason: reason.map(str::to_string),
            decided_at: AT,
        }
    }

    #[test]
    fn given_enough_stock_when_reserving_then_every_line_is_reserved_sorted() {
        let stock = [row("B", 5), row("A", 1)];
        let decision = decide_reserve(&stock, None, &[line("B", 5), line("A", 1)]);
        assert_eq!(
            decision,
            Decision::Reserve {
                lines: vec![line("A", 1), line("B", 5)]
            }
        );
    }

    #[test]
    fn given_one_short_line_when_reserving_then_nothing_is_reserved_and_the_sku_is_named() {
        let stock = [row("A", 10), row("B", 1)];
        let decision = decide_reserve(&stock, None, &[line("A", 2), line("B", 3)]);
        assert_eq!(
            decision,
            Decision::Reject {
                reason: "SKU B short: requested 3, available 1".into()
            }
        );
    }

    #[test]
    fn given_an_unknown_sku_when_reserving_then_it_is_rejected_naming_it() {
        let decision = decide_reserve(&[row("A", 10)], None, &[line("A", 1), line("NOPE", 1)]);
        assert_eq!(
            decision,
            Decision::Reject {
                reason: "unknown SKU NOPE".into()
            }
        );
    }

    #[test]
    fn given_duplicate_sku_lines_when_reserving_then_their_sum_must_fit() {
        let stock = [row("A", 3)];
        assert_eq!(
            decide_reserve(&stock, None, &[line("A", 2), line("A", 1)]),
            Decision::Reserve {
                lines: vec![line("A", 3)]
            }
        );
        assert!(matches!(
            decide_reserve(&stock, None, &[line("A", 2), line("A", 2)]),
            Decision::Reject { reason } if reason == "SKU A short: requested 4, available 3"
        ));
    }

    #[test]
    fn given_exactly_the_available_quantity_when_reserving_then_it_fits() {
        assert!(matches!(
            decide_reserve(&[row("A", 2)], None, &[line("A", 2)]),
            Decision::Reserve { .. }
        ));
    }

    #[test]
    fn given_a_non_positive_quantity_when_reserving_then_it_is_rejected() {
        for quantity in [0, -1] {
            let decision = decide_reserve(&[row("A", 10)], None, &[line("A", quantity)]);
            assert!(
                matches!(decision, Decision::Reject { reason } if reason.contains("SKU A")),
                "{quantity}"
            );
        }
    }

    #[test]
    fn given_no_lines_when_reserving_then_it_is_rejected() {
        assert!(matches!(
            decide_reserve(&[], None, &[]),
            Decision::Reject { .. }
        ));
    }

    #[test]
    fn given_quantities_summing_past_i32_when_merging_then_it_fails_instead_of_wrapping() {
        let result = merge_lines(&[line("A", i32::MAX), line("A", 1)]);
        assert_eq!(result, Err("SKU A: total quantity is too large".into()));
    }

    #[test]
    fn given_a_recorded_reservation_when_reserving_again_then_it_is_repeated_not_redone() {
        let existing = recorded(Status::Reserved, vec![line("A", 2)], None);
        // The stock has since run out: the repeat must not re-check or re-reserve.
        let decision = decide_reserve(&[row("A", 0)], Some(&existing), &[line("A", 2)]);
        assert_eq!(
            decision,
            Decision::AlreadyReserved {
                lines: vec![line("A", 2)],
                reserved_at: AT
            }
        );
    }

    #[test]
    fn given_a_recorded_rejection_when_reserving_again_then_the_rejection_is_repeated() {
        let existing = recorded(Status::Rejected, vec![], Some("unknown SKU X"));
        // Stock appeared meanwhile: the order was decided already.
        let decision = decide_reserve(&[row("X", 100)], Some(&existing), &[line("X", 1)]);
        assert_eq!(
            decision,
            Decision::AlreadyRejected {
                reason: "unknown SKU X".into(),
                rejected_at: AT
            }
        );
    }

    #[test]
    fn given_a_release_tombstone_when_the_reservation_arrives_late_then_it_is_refused() {
        let tombstone = recorded(Status::Released, vec![], Some("timeout"));
        let decision = decide_reserve(&[row("A", 10)], Some(&tombstone), &[line("A", 1)]);
        assert_eq!(decision, Decision::AlreadyReleased);
        let reply = reserve_reply(Uuid::nil(), &decision, AT + 5);
        assert_eq!(
            reply,
            StockRejected {
                order_id: Uuid::nil(),
                reason: RELEASED_REASON.into(),
                rejected_at: AT + 5
            }
            .into()
        );
    }

    #[test]
    fn given_a_reservation_when_releasing_then_its_lines_are_returned() {
        let existing = recorded(Status::Reserved, vec![line("A", 2), line("B", 1)], None);
        let release = decide_release(Some(&existing));
        assert_eq!(release.returned(), &[line("A", 2), line("B", 1)]);
    }

    #[test]
    fn given_no_reservation_when_releasing_then_a_tombstone_is_recorded_and_nothing_returned() {
        let release = decide_release(None);
        assert_eq!(release, Release::Tombstone);
        assert_eq!(
            release_reply(Uuid::nil(), &release, AT),
            StockReleased {
                order_id: Uuid::nil(),
                lines: vec![],
                released_at: AT
            }
            .into()
        );
    }

    #[test]
    fn given_a_rejected_or_released_order_when_releasing_then_nothing_changes() {
        for status in [Status::Rejected, Status::Released] {
            let existing = recorded(status, vec![line("A", 2)], None);
            assert_eq!(
                decide_release(Some(&existing)),
                Release::Nothing,
                "{status:?}"
            );
        }
    }

    #[test]
    fn given_a_repeat_when_replying_then_the_recorded_time_is_announced() {
        let decision = Decision::AlreadyReserved {
            lines: vec![line("A", 1)],
            reserved_at: AT,
        };
        assert_eq!(
            reserve_reply(Uuid::nil(), &decision, AT + 1_000),
            StockReserved {
                order_id: Uuid::nil(),
                lines: vec![line("A", 1)],
                reserved_at: AT
            }
            .into()
        );
    }

    #[test]
    fn skus_are_locked_in_one_sorted_order_without_duplicates() {
        assert_eq!(
            sorted_skus(&[line("b", 1), line("a", 1), line("b", 2)]),
            vec!["a", "b"]
        );
    }

    #[test]
    fn statuses_round_trip_through_their_stored_form() {
        for status in Status::ALL {
            assert_eq!(
                Status::try_from(status.as_str().to_string()).unwrap(),
                *status
            );
        }
        assert!(Status::try_from("reserved".to_string()).is_err());
    }

    #[test]
    fn skus_are_short_and_url_safe() {
        assert!(validate_sku("SKU-1.a_b").is_ok());
        assert!(validate_sku(&"A".repeat(64)).is_ok());
        assert!(validate_sku("").is_err());
        assert!(validate_sku(&"A".repeat(65)).is_err());
        assert!(validate_sku("a b").is_err());
        assert!(validate_sku("a/b").is_err());
        assert!(validate_sku("ü").is_err());
    }
}
