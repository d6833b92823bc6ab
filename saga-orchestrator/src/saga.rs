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

/// Deadlines, retry limits and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub step_timeout: Duration,
    pub max_attempts: u32,
    /// APPROVED and REJECTED sagas are deleted this long after they ended. An OrderPlaced
    /// older than this starts no saga: its saga may have run and been deleted since (a replay
    /// of the topic from its start, a redelivery older than the inbox), and starting it again
    /// would reserve stock and take money a second time for an order decided long ago.
    pub retention: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            step_timeout: Duration::seconds(30),
            max_attempts: 5,
            retention: Duration::days(30),
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
            Trigger::Message(Message::OrderPlaced(placed))
                if placed.placed_at < (now - policy.retention).timestamp_millis() =>
            {
                Decision::Ignore(
                    "placed before the saga retention: its saga may have run and been deleted"
                        .into(),
                )
            }
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
            let next = step(saga, State::AuthorizingPayment, now, policy);
            // Past the step's deadline the saga compensates: a charge started later would
            // only be refunded (a command that waited out a provider outage in its queue).
            let command = AuthorizePayment {
                order_id: saga.order_id,
                customer_id: saga.data.customer_id,
                amount_cents: saga.data.total_cents,
                currency: saga.data.currency.clone(),
                payment_method: saga.data.payment_method.clone(),
                charge_before: next.deadline.map(|d| d.timestamp_millis()),
            }
            .into();
            transition(next, vec![command], "stock reserved")
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
            finish(saga, State::Approved, "order approved")
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
            finish(saga, State::Rejected, "order rejected")
        }
        (_, Message::OrderPlaced(_)) => Decision::Ignore("saga already started".into()),
        (_, other) => late(other.message_type()),
    }
}

/// The saga ends in `terminal`: no deadline, no command.
fn finish(saga: &Saga, terminal: State, note: &str) -> Decision {
    let next = Saga {
        state: terminal,
        deadline: None,
        attempts: 0,
        ..saga.clone()
    };
    transition(next, vec![], note)
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
            retention: Duration::days(30),
        }
    }

    fn placed() -> Step {
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
            placed_at: now().timestamp_millis(),
        }
        .into()
    }

    fn stock_reserved() -> Step {
        StockReserved {
            order_id: ORDER,
            lines: vec![],
            reserved_at: 0,
        }
        .into()
    }
    fn stock_rejected() -> Step {
        StockRejected {
            order_id: ORDER,
            reason: "SKU-1 short".into(),
            rejected_at: 0,
        }
        .into()
    }
    fn stock_released() -> Step {
        StockReleased {
            order_id: ORDER,
            lines: vec![],
            released_at: 0,
        }
        .into()
    }
    fn authorized() -> Step {
        PaymentAuthorized {
            order_id: ORDER,
            payment_id: "ch_1".into(),
            amount_cents: 1000,
            currency: "EUR".into(),
            authorized_at: 0,
        }
        .into()
    }
    fn declined() -> Step {
        PaymentDeclined {
            order_id: ORDER,
            reason: "card_declined".into(),
            declined_at: 0,
        }
        .into()
    }
    fn refunded() -> Step {
        PaymentRefunded {
            order_id: ORDER,
            payment_id: None,
            amount_cents: 0,
            currency: "EUR".into(),
            refunded_at: 0,
        }
        .into()
    }
    fn approved() -> Step {
        OrderApproved {
            order_id: ORDER,
            customer_id: Uuid::from_u128(2),
            total_cents: 1000,
            currency: "EUR".into(),
            approved_at: 0,
        }
        .into()
    }
    fn rejected() -> Step {
        OrderRejected {
            order_id: ORDER,
            customer_id: Uuid::from_u128(2),
            reason: "x".into(),
            rejected_at: 0,
        }
        .into()
    }

    /// A step of a saga's life: a message, or its deadline passing.
    #[derive(Debug, Clone)]
    enum Step {
        Message(Message),
        Deadline,
    }

    use Step::Deadline;

    impl<T: Into<Message>> From<T> for Step {
        fn from(message: T) -> Self {
            Step::Message(message.into())
        }
    }

    impl Step {
        fn trigger(&self) -> Trigger<'_> {
            match self {
                Step::Message(message) => Trigger::Message(message),
                Step::Deadline => Trigger::Deadline,
            }
        }
    }

    /// Given/when/then for the saga (the cqrs-es `TestFramework` shape), owning its steps so
    /// tests need no temporaries: `given(steps)` applies steps, `when(step)` decides one,
    /// `then_*` asserts the decision and carries the saga on for the next `when`.
    #[derive(Debug)]
    struct SagaTest {
        saga: Option<Saga>,
    }

    /// A decision awaiting its assertion.
    #[derive(Debug)]
    struct Decided {
        before: Option<Saga>,
        decision: Decision,
    }

    fn given(steps: impl IntoIterator<Item = Step>) -> SagaTest {
        let mut saga = None;
        for step in steps {
            if let Decision::Transition { saga: next, .. } =
                decide(saga.as_ref(), step.trigger(), now(), &policy())
            {
                saga = Some(next);
            }
        }
        SagaTest { saga }
    }

    impl SagaTest {
        fn when(self, step: Step) -> Decided {
            let decision = decide(self.saga.as_ref(), step.trigger(), now(), &policy());
            Decided {
                before: self.saga,
                decision,
            }
        }

        fn saga(&self) -> &Saga {
            self.saga.as_ref().expect("a saga")
        }

        /// Further assertions on the saga as it stands.
        fn and(self, check: impl FnOnce(&Saga)) -> Self {
            check(self.saga());
            self
        }
    }

    impl Decided {
        /// A transition to `state` that sends `commands`, all for the order.
        fn then_expect(self, state: State, commands: &[MessageType]) -> SagaTest {
            match self.decision {
                Decision::Transition {
                    saga,
                    commands: sent,
                    ..
                } => {
                    assert_eq!(saga.state, state);
                    let kinds: Vec<MessageType> = sent.iter().map(Message::kind).collect();
                    assert_eq!(kinds, commands);
                    assert!(sent.iter().all(|c| c.order_id() == ORDER));
                    SagaTest { saga: Some(saga) }
                }
                Decision::Ignore(why) => panic!("expected {state:?}, ignored: {why}"),
            }
        }

        /// Nothing happens: the saga stays as it was.
        fn then_ignored(self) -> SagaTest {
            assert!(
                matches!(self.decision, Decision::Ignore(_)),
                "{:?}",
                self.decision
            );
            SagaTest { saga: self.before }
        }

        /// FAILED with an alert, no command, no deadline.
        fn then_fails_with_an_alert(self) -> SagaTest {
            match self.decision {
                Decision::Transition {
                    saga,
                    commands,
                    alert,
                    ..
                } => {
                    assert_eq!(saga.state, State::Failed);
                    assert!(commands.is_empty() && alert && saga.deadline.is_none());
                    SagaTest { saga: Some(saga) }
                }
                other => panic!("{other:?}"),
            }
        }
    }

    use MessageType::{
        ApproveOrder, AuthorizePayment, RefundPayment, RejectOrder, ReleaseStock, ReserveStock,
    };

    #[test]
    fn order_placed_starts_the_saga_with_a_deadline() {
        given([])
            .when(placed())
            .then_expect(State::ReservingStock, &[ReserveStock])
            .and(|saga| assert_eq!(saga.deadline, Some(now() + Duration::seconds(10))));
    }

    /// Placed exactly `age` before `now()`.
    fn placed_ago(age: Duration) -> Step {
        let Step::Message(Message::OrderPlaced(mut placed)) = placed() else {
            unreachable!()
        };
        placed.placed_at = (now() - age).timestamp_millis();
        placed.into()
    }

    #[test]
    fn an_order_placed_before_the_retention_starts_no_saga() {
        given([])
            .when(placed_ago(Duration::days(30) + Duration::milliseconds(1)))
            .then_ignored();
        given([])
            .when(placed_ago(Duration::days(30)))
            .then_expect(State::ReservingStock, &[ReserveStock]);
    }

    #[test]
    fn a_reply_without_a_saga_is_ignored() {
        given([]).when(stock_reserved()).then_ignored();
    }

    #[test]
    fn happy_path_reserves_charges_and_approves() {
        given([placed()])
            .when(stock_reserved())
            .then_expect(State::AuthorizingPayment, &[AuthorizePayment])
            .when(authorized())
            .then_expect(State::Approving, &[ApproveOrder])
            .when(approved())
            .then_expect(State::Approved, &[])
            .and(|done| assert_eq!(done.deadline, None, "terminal states have no deadline"));
    }

    #[test]
    fn the_payment_command_forbids_charging_after_the_step_deadline() {
        let Decision::Transition { saga, commands, .. } =
            given([placed()]).when(stock_reserved()).decision
        else {
            panic!("stock reserved moves the saga on");
        };
        let [Message::AuthorizePayment(command)] = commands.as_slice() else {
            panic!("one AuthorizePayment: {commands:?}");
        };
        let deadline = saga.deadline.expect("the step has a deadline");
        assert_eq!(command.charge_before, Some(deadline.timestamp_millis()));
    }

    #[test]
    fn out_of_stock_rejects_without_compensation() {
        given([placed()])
            .when(stock_rejected())
            .then_expect(State::Rejecting, &[RejectOrder])
            .when(rejected())
            .then_expect(State::Rejected, &[]);
    }

    #[test]
    fn a_declined_card_releases_stock_then_rejects() {
        given([placed(), stock_reserved()])
            .when(declined())
            .then_expect(State::Compensating, &[ReleaseStock])
            .when(stock_released())
            .then_expect(State::Rejecting, &[RejectOrder])
            .and(|saga| assert!(saga.data.reason.as_ref().unwrap().contains("card_declined")))
            .when(rejected())
            .then_expect(State::Rejected, &[]);
    }

    #[test]
    fn a_payment_deadline_refunds_and_releases_and_waits_for_both() {
        given([placed(), stock_reserved()])
            .when(Deadline)
            .then_expect(State::Compensating, &[RefundPayment, ReleaseStock])
            .when(stock_released())
            .then_expect(State::Compensating, &[])
            .when(refunded())
            .then_expect(State::Rejecting, &[RejectOrder])
            .when(rejected())
            .then_expect(State::Rejected, &[]);
    }

    #[test]
    fn a_stock_deadline_releases_whatever_may_have_been_reserved() {
        given([placed()])
            .when(Deadline)
            .then_expect(State::Compensating, &[ReleaseStock]);
    }

    #[test]
    fn a_late_payment_reply_after_the_deadline_is_ignored() {
        // The refund already queued behind the charge undoes it; the saga must not approve.
        given([placed(), stock_reserved(), Deadline])
            .when(authorized())
            .then_ignored()
            .when(declined())
            .then_ignored()
            .and(|saga| assert_eq!(saga.state, State::Compensating));
    }

    #[test]
    fn a_late_stock_reply_after_the_deadline_is_ignored() {
        given([placed(), Deadline])
            .when(stock_reserved())
            .then_ignored();
    }

    #[test]
    fn duplicates_change_nothing() {
        given([placed(), stock_reserved()])
            .when(placed())
            .then_ignored()
            .when(stock_reserved())
            .then_ignored();
        given([placed(), stock_reserved(), authorized()])
            .when(authorized())
            .then_ignored();
    }

    #[test]
    fn terminal_sagas_ignore_everything() {
        let approved_saga = || given([placed(), stock_reserved(), authorized(), approved()]);
        for step in [
            placed(),
            stock_reserved(),
            authorized(),
            approved(),
            Deadline,
        ] {
            approved_saga().when(step).then_ignored();
        }
    }

    #[test]
    fn stuck_compensation_is_retried_with_backoff_then_fails_with_an_alert() {
        given([placed(), stock_reserved(), declined()])
            .when(Deadline)
            .then_expect(State::Compensating, &[ReleaseStock])
            .and(|saga| {
                assert_eq!(saga.attempts, 1);
                assert_eq!(
                    saga.deadline,
                    Some(now() + Duration::seconds(20)),
                    "backoff doubles"
                );
            })
            .when(Deadline)
            .then_expect(State::Compensating, &[ReleaseStock])
            .and(|saga| assert_eq!(saga.deadline, Some(now() + Duration::seconds(40))))
            .when(Deadline)
            .then_fails_with_an_alert();
    }

    #[test]
    fn a_compensation_confirmed_after_retries_still_rejects() {
        given([placed(), stock_reserved(), declined(), Deadline])
            .when(stock_released())
            .then_expect(State::Rejecting, &[RejectOrder])
            .and(|saga| assert_eq!(saga.attempts, 0, "a new step starts its own attempts"))
            .when(rejected())
            .then_expect(State::Rejected, &[]);
    }

    #[test]
    fn approving_and_rejecting_retry_their_command_on_deadline() {
        given([placed(), stock_reserved(), authorized()])
            .when(Deadline)
            .then_expect(State::Approving, &[ApproveOrder]);
        given([placed(), stock_rejected()])
            .when(Deadline)
            .then_expect(State::Rejecting, &[RejectOrder]);
    }

    /// The order service rejected the order (its order deadline passed) while the saga was
    /// approving it — or answered the ApproveOrder with OrderRejected: refund and release, then
    /// reject; a second OrderRejected (the reply to a retried ApproveOrder) changes nothing.
    #[test]
    fn an_order_rejected_by_the_order_service_while_approving_refunds_releases_then_rejects() {
        given([placed(), stock_reserved(), authorized()])
            .and(|saga| assert_eq!(saga.state, State::Approving))
            .when(rejected())
            .then_expect(State::Compensating, &[RefundPayment, ReleaseStock])
            .and(|saga| {
                let reason = saga.data.reason.as_deref().unwrap_or_default();
                assert!(reason.contains('x'), "the order's reason is kept: {saga:?}");
            })
            .when(rejected())
            .then_ignored()
            .when(stock_released())
            .then_expect(State::Compensating, &[])
            .when(refunded())
            .then_expect(State::Rejecting, &[RejectOrder])
            .when(rejected())
            .then_expect(State::Rejected, &[]);
    }

    #[test]
    fn an_order_rejected_by_the_order_service_before_approval_gives_back_what_may_be_held() {
        given([placed()])
            .when(rejected())
            .then_expect(State::Compensating, &[ReleaseStock]);
        given([placed(), stock_reserved()])
            .when(rejected())
            .then_expect(State::Compensating, &[RefundPayment, ReleaseStock]);
        // Already compensating: the saga's own rejection follows.
        given([placed(), stock_reserved(), Deadline])
            .when(rejected())
            .then_ignored();
    }

    #[test]
    fn states_round_trip_through_text() {
        for state in State::ALL {
            assert_eq!(State::try_from(state.as_str().to_string()).unwrap(), *state);
        }
        assert!(State::try_from("BOGUS".to_string()).is_err());
    }
}
