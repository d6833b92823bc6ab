//! The order saga as a pure state machine: `decide(saga, trigger, now, policy)`.
//!
//! ```text
//! OrderPlaced ─► RESERVING_STOCK ─StockReserved─► AUTHORIZING_PAYMENT ─PaymentAuthorized─► APPROVING ─OrderApproved─► APPROVED
//!                     │ StockRejected                  │ PaymentDeclined: ReleaseStock
//!                     │                                │ deadline: ReleaseStock + RefundPayment
//!                     │ deadline: ReleaseStock         ▼
//!                     └──────────────────────────► COMPENSATING ─all released/refunded─► REJECTING ─OrderRejected─► REJECTED
//! ```
//! Steps that cannot be undone any more (APPROVING, COMPENSATING, REJECTING) are retried on
//! their deadline with exponential backoff; after `max_attempts` the saga is FAILED and an
//! alert raised — never left hanging, never silently "done".
//!
//! Late replies: a reply for a step that already timed out is ignored, and stays harmless
//! because the compensation was sent *after* the command on the same partition (key = order
//! id): inventory applies ReserveStock then ReleaseStock, payment applies AuthorizePayment then
//! RefundPayment, so stock and money balance whatever the timing.
//!
//! Orders rejected without the saga: the order service rejects an order still PENDING at its
//! order deadline (issue 16), and answers a later ApproveOrder with OrderRejected again. An
//! OrderRejected the saga did not ask for (in RESERVING_STOCK, AUTHORIZING_PAYMENT or
//! APPROVING) is handled like a step deadline: compensate, then confirm with RejectOrder.

use chrono::{DateTime, Duration, Utc};
use sagaflow_schemas::{
    ApproveOrder, AuthorizePayment, Message, OrderItem, RefundPayment, RejectOrder, ReleaseStock,
    ReserveStock, StockLine,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

sagaflow_runtime::text_enum! {
    /// Where a saga stands (`sagas.state`).
    pub enum State("saga state") {
        ReservingStock = "RESERVING_STOCK",
        AuthorizingPayment = "AUTHORIZING_PAYMENT",
        Approving = "APPROVING",
        Compensating = "COMPENSATING",
        Rejecting = "REJECTING",
        Approved = "APPROVED",
        Rejected = "REJECTED",
        Failed = "FAILED",
    }
}

impl State {
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Approved | State::Rejected | State::Failed)
    }
}

/// What the saga knows about its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaData {
    pub customer_id: Uuid,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub currency: String,
    pub payment_method: String,
    /// Why the order is being rejected, once it is.
    pub reason: Option<String>,
    /// Compensations sent and not yet confirmed.
    pub awaiting_release: bool,
    pub awaiting_refund: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    pub order_id: Uuid,
    pub state: State,
    pub data: SagaData,
    /// When the current step times out; `None` in terminal states.
    pub deadline: Option<DateTime<Utc>>,
    /// Retries of the current step.
    pub attempts: u32,
}

/// What moves a saga.
#[derive(Debug, Clone, Copy)]
pub enum Trigger<'a> {
    Message(&'a Message),
    /// The current step's deadline passed.
    Deadline,
}

/// Deadlines and retry limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub step_timeout: Duration,
    pub max_attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            step_timeout: Duration::seconds(30),
            max_attempts: 5,
        }
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Move to `saga` and send `commands`. `alert` marks a saga that FAILED.
    Transition {
        saga: Saga,
        commands: Vec<Message>,
        note: String,
        alert: bool,
    },
    /// Nothing changes (duplicate, late or irrelevant); the note says why.
    Ignore(String),
}

fn lines(items: &[OrderItem]) -> Vec<StockLine> {
    items
        .iter()
        .map(|i| StockLine {
            sku: i.sku.clone(),
            quantity: i.quantity,
        })
        .collect()
}

/// Decide what a trigger does to a saga (`None`: no saga for this order yet).
pub fn decide(
    saga: Option<&Saga>,
    trigger: Trigger<'_>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Decision {
    let Some(saga) = saga else {
        return match trigger {
            Trigger::Message(Message::OrderPlaced(placed)) => {
                let data = SagaData {
                    customer_id: placed.customer_id,
                    items: placed.items.clone(),
                    total_cents: placed.total_cents,
                    currency: placed.currency.clone(),
                    payment_method: placed.payment_method.clone(),
                    reason: None,
                    awaiting_release: false,
                    awaiting_refund: false,
                };
                let command = ReserveStock {
                    order_id: placed.order_id,
                    lines: lines(&placed.items),
                }
                .into();
                let saga = Saga {
                    order_id: placed.order_id,
                    state: State::ReservingStock,
                    data,
                    deadline: Some(now + policy.step_timeout),
                    attempts: 0,
                };
                Decision::Transition {
                    saga,
                    commands: vec![command],
                    note: "order placed".into(),
                    alert: false,
                }
            }
            _ => Decision::Ignore("no saga for this order".into()),
        };
    };
    if saga.state.is_terminal() {
        return Decision::Ignore(format!("saga already {}", saga.state.as_str()));
    }
    match trigger {
        Trigger::Deadline => on_deadline(saga, now, policy),
        Trigger::Message(message) => on_message(saga, message, now, policy),
    }
}

fn step(saga: &Saga, state: State, now: DateTime<Utc>, policy: &Policy) -> Saga {
    Saga {
        state,
        deadline: Some(now + policy.step_timeout),
        attempts: 0,
        ..saga.clone()
    }
}

fn transition(saga: Saga, commands: Vec<Message>, note: impl Into<String>) -> Decision {
    Decision::Transition {
        saga,
        commands,
        note: note.into(),
        alert: false,
    }
}

/// Start compensating: release stock always (a reservation may be in flight), refund when a
/// charge may exist.
fn compensate(
    saga: &Saga,
    reason: String,
    refund: bool,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Decision {
    let mut next = step(saga, State::Compensating, now, policy);
    next.data.reason = Some(reason.clone());
    next.data.awaiting_release = true;
    next.data.awaiting_refund = refund;
    let commands = compensation_commands(&next);
    transition(next, commands, reason)
}

fn compensation_commands(saga: &Saga) -> Vec<Message> {
    let reason = saga.data.reason.clone().unwrap_or_default();
    let mut commands: Vec<Message> = Vec::new();
    if saga.data.awaiting_refund {
        commands.push(
            RefundPayment {
                order_id: saga.order_id,
                reason: reason.clone(),
            }
            .into(),
        );
    }
    if saga.data.awaiting_release {
        commands.push(
            ReleaseStock {
                order_id: saga.order_id,
                reason,
            }
            .into(),
        );
    }
    commands
}

fn reject(saga: &Saga, reason: String, now: DateTime<Utc>, policy: &Policy) -> Decision {
    let mut next = step(saga, State::Rejecting, now, policy);
    next.data.reason = Some(reason.clone());
    let command = RejectOrder {
        order_id: saga.order_id,
        reason: reason.clone(),
    }
    .into();
    transition(next, vec![command], reason)
}

fn on_message(saga: &Saga, message: &Message, now: DateTime<Utc>, policy: &Policy) -> Decision {
    let late = |what: &str| {
        Decision::Ignore(format!(
            "{what} arrived in {}: ignored",
            saga.state.as_str()
        ))
    };
    match (saga.state, message) {
        (State::ReservingStock, Message::StockReserved(_)) => {
            let command = AuthorizePayment {
                order_id: saga.order_id,
                customer_id: saga.data.customer_id,
                amount_cents: saga.data.total_cents,
                currency: saga.data.currency.clone(),
                payment_method: saga.data.payment_method.clone(),
            }
            .into();
            transition(
                step(saga, State::AuthorizingPayment, now, policy),
                vec![command],
                "stock reserved",
            )
        }
        (State::ReservingStock, Message::StockRejected(m)) => {
            reject(saga, format!("out of stock: {}", m.reason), now, policy)
        }
        (State::AuthorizingPayment, Message::PaymentAuthorized(_)) => {
            let command = ApproveOrder {
                order_id: saga.order_id,
            }
            .into();
            transition(
                step(saga, State::Approving, now, policy),
                vec![command],
                "payment authorized",
            )
        }
        (State::AuthorizingPayment, Message::PaymentDeclined(m)) => compensate(
            saga,
            format!("payment declined: {}", m.reason),
            false,
            now,
            policy,
        ),
        (State::Approving, Message::OrderApproved(_)) => {
            let next = Saga {
                state: State::Approved,
                deadline: None,
                attempts: 0,
                ..saga.clone()
            };
            transition(next, vec![], "order approved")
        }
        (State::Compensating, Message::StockReleased(_)) if saga.data.awaiting_release => {
            let mut next = saga.clone();
            next.data.awaiting_release = false;
            compensation_progress(next, "stock released", now, policy)
        }
        (State::Compensating, Message::PaymentRefunded(_)) if saga.data.awaiting_refund => {
            let mut next = saga.clone();
            next.data.awaiting_refund = false;
            compensation_progress(next, "payment refunded", now, policy)
        }
        // The order service rejected the order by itself: its order deadline passed before the
        // saga decided (order-service `deadline`), or it answered this saga's ApproveOrder for an
        // order it had already rejected that way. It will never be approved: give back what may
        // be held — stock always, money once a charge may exist — then confirm with RejectOrder
        // (answered with OrderRejected again). Safe whatever is still in flight, like a step
        // deadline: the compensations queue behind the commands on the order's partition.
        (
            State::ReservingStock | State::AuthorizingPayment | State::Approving,
            Message::OrderRejected(m),
        ) => compensate(
            saga,
            format!("order rejected by the order service: {}", m.reason),
            saga.state != State::ReservingStock,
            now,
            policy,
        ),
        (State::Rejecting, Message::OrderRejected(_)) => {
            let next = Saga {
                state: State::Rejected,
                deadline: None,
                attempts: 0,
                ..saga.clone()
            };
            transition(next, vec![], "order rejected")
        }
        (_, Message::OrderPlaced(_)) => Decision::Ignore("saga already started".into()),
        (_, other) => late(other.message_type()),
    }
}

/// After one compensation confirmed: wait for the other, or reject the order.
fn compensation_progress(next: Saga, note: &str, now: DateTime<Utc>, policy: &Policy) -> Decision {
    if next.data.awaiting_release || next.data.awaiting_refund {
        transition(next, vec![], note)
    } else {
        let reason = next
            .data
            .reason
            .clone()
            .unwrap_or_else(|| "compensated".into());
        reject(&next, reason, now, policy)
    }
}

fn on_deadline(saga: &Saga, now: DateTime<Utc>, policy: &Policy) -> Decision {
    match saga.state {
        State::ReservingStock => {
            compensate(saga, "timed out reserving stock".into(), false, now, policy)
        }
        State::AuthorizingPayment => compensate(
            saga,
            "timed out authorizing payment".into(),
            true,
            now,
            policy,
        ),
        State::Approving | State::Compensating | State::Rejecting => retry(saga, now, policy),
        State::Approved | State::Rejected | State::Failed => Decision::Ignore("terminal".into()),
    }
}

/// Re-send the current step's commands with exponential backoff, or give up: FAILED + alert.
fn retry(saga: &Saga, now: DateTime<Utc>, policy: &Policy) -> Decision {
    let attempts = saga.attempts + 1;
    if attempts > policy.max_attempts {
        let next = Saga {
            state: State::Failed,
            deadline: None,
            attempts,
            ..saga.clone()
        };
        let note = format!(
            "{} did not complete after {} retries",
            saga.state.as_str(),
            policy.max_attempts
        );
        return Decision::Transition {
            saga: next,
            commands: vec![],
            note,
            alert: true,
        };
    }
    let commands = match saga.state {
        State::Approving => vec![
            ApproveOrder {
                order_id: saga.order_id,
            }
            .into(),
        ],
        State::Compensating => compensation_commands(saga),
        State::Rejecting => vec![
            RejectOrder {
                order_id: saga.order_id,
                reason: saga.data.reason.clone().unwrap_or_default(),
            }
            .into(),
        ],
        _ => vec![],
    };
    let backoff = policy.step_timeout * 2i32.saturating_pow(attempts.min(6));
    let next = Saga {
        deadline: Some(now + backoff),
        attempts,
        ..saga.clone()
    };
    transition(
        next,
        commands,
        format!("retry {attempts} of {}", saga.state.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_schemas::*;

    const ORDER: Uuid = Uuid::from_u128(1);

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            step_timeout: Duration::seconds(10),
            max_attempts: 2,
        }
    }

    fn placed() -> Message {
        OrderPlaced {
            order_id: ORDER,
            customer_id: Uuid::from_u128(2),
            items: vec![OrderItem {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_cents: 500,
            }],
            total_cents: 1000,
            currency: "EUR".into(),
            payment_method: "pm_card_visa".into(),
            placed_at: 0,
        }
        .into()
    }

    fn stock_reserved() -> Message {
        StockReserved {
            order_id: ORDER,
            lines: vec![],
            reserved_at: 0,
        }
        .into()
    }
    fn stock_rejected() -> Message {
        StockRejected {
            order_id: ORDER,
            reason: "SKU-1 short".into(),
            rejected_at: 0,
        }
        .into()
    }
    fn stock_released() -> Message {
        StockReleased {
            order_id: ORDER,
            lines: vec![],
            released_at: 0,
        }
        .into()
    }
    fn authorized() -> Message {
        PaymentAuthorized {
            order_id: ORDER,
            payment_id: "ch_1".into(),
            amount_cents: 1000,
            currency: "EUR".into(),
            authorized_at: 0,
        }
        .into()
    }
    fn declined() -> Message {
        PaymentDeclined {
            order_id: ORDER,
            reason: "card_declined".into(),
            declined_at: 0,
        }
        .into()
    }
    fn refunded() -> Message {
        PaymentRefunded {
            order_id: ORDER,
            payment_id: None,
            amount_cents: 0,
            currency: "EUR".into(),
            refunded_at: 0,
        }
        .into()
    }
    fn approved() -> Message {
        OrderApproved {
            order_id: ORDER,
            customer_id: Uuid::from_u128(2),
            total_cents: 1000,
            currency: "EUR".into(),
            approved_at: 0,
        }
        .into()
    }
    fn rejected() -> Message {
        OrderRejected {
            order_id: ORDER,
            customer_id: Uuid::from_u128(2),
            reason: "x".into(),
            rejected_at: 0,
        }
        .into()
    }

    /// Given the messages so far, when `trigger`, then the decision.
    fn given(history: &[Trigger<'_>]) -> Option<Saga> {
        let mut saga = None;
        for trigger in history {
            if let Decision::Transition { saga: next, .. } =
                decide(saga.as_ref(), *trigger, now(), &policy())
            {
                saga = Some(next);
            }
        }
        saga
    }

    fn when(saga: &Option<Saga>, trigger: Trigger<'_>) -> Decision {
        decide(saga.as_ref(), trigger, now(), &policy())
    }

    fn then_transition(decision: Decision, state: State, command_types: &[&str]) -> Saga {
        match decision {
            Decision::Transition { saga, commands, .. } => {
                assert_eq!(saga.state, state);
                let types: Vec<_> = commands.iter().map(|c| c.message_type()).collect();
                assert_eq!(types, command_types);
                assert!(commands.iter().all(|c| c.order_id() == ORDER));
                saga
            }
            Decision::Ignore(why) => panic!("expected {state:?}, ignored: {why}"),
        }
    }

    fn then_ignored(decision: Decision) {
        assert!(matches!(decision, Decision::Ignore(_)), "{decision:?}");
    }

    use Trigger::{Deadline, Message as M};

    #[test]
    fn order_placed_starts_the_saga_with_a_deadline() {
        let (p,) = (placed(),);
        let saga = then_transition(when(&None, M(&p)), State::ReservingStock, &["ReserveStock"]);
        assert_eq!(saga.deadline, Some(now() + Duration::seconds(10)));
    }

    #[test]
    fn a_reply_without_a_saga_is_ignored() {
        then_ignored(when(&None, M(&stock_reserved())));
    }

    #[test]
    fn happy_path_reserves_charges_and_approves() {
        let (p, r, a, o) = (placed(), stock_reserved(), authorized(), approved());
        let s = given(&[M(&p)]);
        let s = Some(then_transition(
            when(&s, M(&r)),
            State::AuthorizingPayment,
            &["AuthorizePayment"],
        ));
        let s = Some(then_transition(
            when(&s, M(&a)),
            State::Approving,
            &["ApproveOrder"],
        ));
        let done = then_transition(when(&s, M(&o)), State::Approved, &[]);
        assert_eq!(done.deadline, None, "terminal states have no deadline");
    }

    #[test]
    fn out_of_stock_rejects_without_compensation() {
        let (p, r, o) = (placed(), stock_rejected(), rejected());
        let s = given(&[M(&p)]);
        let s = Some(then_transition(
            when(&s, M(&r)),
            State::Rejecting,
            &["RejectOrder"],
        ));
        then_transition(when(&s, M(&o)), State::Rejected, &[]);
    }

    #[test]
    fn a_declined_card_releases_stock_then_rejects() {
        let (p, r, d, rel, o) = (
            placed(),
            stock_reserved(),
            declined(),
            stock_released(),
            rejected(),
        );
        let s = given(&[M(&p), M(&r)]);
        let s = Some(then_transition(
            when(&s, M(&d)),
            State::Compensating,
            &["ReleaseStock"],
        ));
        let s = Some(then_transition(
            when(&s, M(&rel)),
            State::Rejecting,
            &["RejectOrder"],
        ));
        assert!(
            s.as_ref()
                .unwrap()
                .data
                .reason
                .as_ref()
                .unwrap()
                .contains("card_declined")
        );
        then_transition(when(&s, M(&o)), State::Rejected, &[]);
    }

    #[test]
    fn a_payment_deadline_refunds_and_releases_and_waits_for_both() {
        let (p, r, rel, refd, o) = (
            placed(),
            stock_reserved(),
            stock_released(),
            refunded(),
            rejected(),
        );
        let s = given(&[M(&p), M(&r)]);
        let s = Some(then_transition(
            when(&s, Deadline),
            State::Compensating,
            &["RefundPayment", "ReleaseStock"],
        ));
        let s = Some(then_transition(when(&s, M(&rel)), State::Compensating, &[]));
        let s = Some(then_transition(
            when(&s, M(&refd)),
            State::Rejecting,
            &["RejectOrder"],
        ));
        then_transition(when(&s, M(&o)), State::Rejected, &[]);
    }

    #[test]
    fn a_stock_deadline_releases_whatever_may_have_been_reserved() {
        let p = placed();
        let s = given(&[M(&p)]);
        then_transition(when(&s, Deadline), State::Compensating, &["ReleaseStock"]);
    }

    #[test]
    fn a_late_payment_reply_after_the_deadline_is_ignored() {
        let (p, r, a, d) = (placed(), stock_reserved(), authorized(), declined());
        let s = given(&[M(&p), M(&r), Deadline]);
        // The refund already queued behind the charge undoes it; the saga must not approve.
        then_ignored(when(&s, M(&a)));
        then_ignored(when(&s, M(&d)));
        assert_eq!(s.unwrap().state, State::Compensating);
    }

    #[test]
    fn a_late_stock_reply_after_the_deadline_is_ignored() {
        let (p, r) = (placed(), stock_reserved());
        let s = given(&[M(&p), Deadline]);
        then_ignored(when(&s, M(&r)));
    }

    #[test]
    fn duplicates_change_nothing() {
        let (p, r, a) = (placed(), stock_reserved(), authorized());
        let s = given(&[M(&p), M(&r)]);
        then_ignored(when(&s, M(&p)));
        then_ignored(when(&s, M(&r)));
        let s = given(&[M(&p), M(&r), M(&a)]);
        then_ignored(when(&s, M(&a)));
    }

    #[test]
    fn terminal_sagas_ignore_everything() {
        let (p, r, a, o) = (placed(), stock_reserved(), authorized(), approved());
        let s = given(&[M(&p), M(&r), M(&a), M(&o)]);
        for trigger in [M(&p), M(&r), M(&a), M(&o), Deadline] {
            then_ignored(when(&s, trigger));
        }
    }

    #[test]
    fn stuck_compensation_is_retried_with_backoff_then_fails_with_an_alert() {
        let (p, r, d) = (placed(), stock_reserved(), declined());
        let s = given(&[M(&p), M(&r), M(&d)]);
        let s1 = then_transition(when(&s, Deadline), State::Compensating, &["ReleaseStock"]);
        assert_eq!(s1.attempts, 1);
        assert_eq!(
            s1.deadline,
            Some(now() + Duration::seconds(20)),
            "backoff doubles"
        );
        let s2 = then_transition(
            when(&Some(s1), Deadline),
            State::Compensating,
            &["ReleaseStock"],
        );
        assert_eq!(s2.deadline, Some(now() + Duration::seconds(40)));
        match when(&Some(s2), Deadline) {
            Decision::Transition {
                saga,
                commands,
                alert,
                ..
            } => {
                assert_eq!(saga.state, State::Failed);
                assert!(commands.is_empty() && alert && saga.deadline.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_compensation_confirmed_after_retries_still_rejects() {
        let (p, r, d, rel, o) = (
            placed(),
            stock_reserved(),
            declined(),
            stock_released(),
            rejected(),
        );
        let s = given(&[M(&p), M(&r), M(&d), Deadline]);
        let s = Some(then_transition(
            when(&s, M(&rel)),
            State::Rejecting,
            &["RejectOrder"],
        ));
        assert_eq!(
            s.as_ref().unwrap().attempts,
            0,
            "a new step starts its own attempts"
        );
        then_transition(when(&s, M(&o)), State::Rejected, &[]);
    }

    #[test]
    fn approving_and_rejecting_retry_their_command_on_deadline() {
        let (p, r, a, rj) = (placed(), stock_reserved(), authorized(), stock_rejected());
        let s = given(&[M(&p), M(&r), M(&a)]);
        then_transition(when(&s, Deadline), State::Approving, &["ApproveOrder"]);
        let s = given(&[M(&p), M(&rj)]);
        then_transition(when(&s, Deadline), State::Rejecting, &["RejectOrder"]);
    }

    /// The order service rejected the order (its order deadline passed) while the saga was
    /// approving it — or answered the ApproveOrder with OrderRejected: refund and release, then
    /// reject; a second OrderRejected (the reply to a retried ApproveOrder) changes nothing.
    #[test]
    fn an_order_rejected_by_the_order_service_while_approving_refunds_releases_then_rejects() {
        let (p, r, a, o, rel, refd) = (
            placed(),
            stock_reserved(),
            authorized(),
            rejected(),
            stock_released(),
            refunded(),
        );
        let s = given(&[M(&p), M(&r), M(&a)]);
        assert_eq!(s.as_ref().unwrap().state, State::Approving);
        let s = Some(then_transition(
            when(&s, M(&o)),
            State::Compensating,
            &["RefundPayment", "ReleaseStock"],
        ));
        assert!(
            s.as_ref()
                .unwrap()
                .data
                .reason
                .as_ref()
                .unwrap()
                .contains("x"),
            "the order's reason is kept: {s:?}"
        );
        then_ignored(when(&s, M(&o)));
        let s = Some(then_transition(when(&s, M(&rel)), State::Compensating, &[]));
        let s = Some(then_transition(
            when(&s, M(&refd)),
            State::Rejecting,
            &["RejectOrder"],
        ));
        then_transition(when(&s, M(&o)), State::Rejected, &[]);
    }

    #[test]
    fn an_order_rejected_by_the_order_service_before_approval_gives_back_what_may_be_held() {
        let (p, r, o) = (placed(), stock_reserved(), rejected());
        let s = given(&[M(&p)]);
        then_transition(when(&s, M(&o)), State::Compensating, &["ReleaseStock"]);
        let s = given(&[M(&p), M(&r)]);
        then_transition(
            when(&s, M(&o)),
            State::Compensating,
            &["RefundPayment", "ReleaseStock"],
        );
        // Already compensating: the saga's own rejection follows.
        let s = given(&[M(&p), M(&r), Deadline]);
        then_ignored(when(&s, M(&o)));
    }

    #[test]
    fn states_round_trip_through_text() {
        for state in State::ALL {
            assert_eq!(State::try_from(state.as_str().to_string()).unwrap(), *state);
        }
        assert!(State::try_from("BOGUS".to_string()).is_err());
    }
}
