//! The capacity search of the saga benchmark, as pure functions of the steps measured so far:
//! [`next`] says at which rate to run the next steady step (or to stop), [`found`] what the
//! steps found (the saga ceiling and the rate of the measured run).
//!
//! The rate grows geometrically until a step is not sustainable; then the search is refined
//! at most twice (the geometric mean of the last good and the first bad rate while they are
//! more than 15 % apart, or half the first bad rate when no rate was good). No I/O and no
//! clocks, so every decision is unit-tested below.

use crate::bench::stats::next_rate;

/// Refinements of the search after the first unsustainable step, at most: each costs a step
/// of the ramp's budget.
const MAX_REFINEMENTS: u32 = 2;
/// The last good and the first bad rate are close enough when within this ratio.
const CLOSE_ENOUGH: f64 = 1.15;

/// How the ramp starts and grows (from the command line).
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub start_rate: f64,
    pub factor: f64,
    /// With no sustainable rate yet, the next step runs at the lowest bad rate times this.
    pub back_off: f64,
}

/// One measured ramp step: its rate and whether the sagas kept up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Probe {
    pub rate: f64,
    pub saga_ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Decision {
    /// Run the next step at this rate.
    Step(f64),
    /// The search is over.
    Stop,
}

/// What the ramp found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Found {
    /// The highest sustainable rate (the start rate when none was).
    pub saga_ceiling: f64,
    /// The rate of the measured run: half the ceiling, at least 1.
    pub run_rate: f64,
}

/// The search state after some steps: the highest good and lowest bad rate so far.
#[derive(Debug, Default)]
struct Bounds {
    good: Option<f64>,
    bad: Option<f64>,
    refinements: u32,
}

impl Bounds {
    fn record(&mut self, probe: Probe) {
        if probe.saga_ok {
            self.good = Some(self.good.map_or(probe.rate, |g| g.max(probe.rate)));
        } else {
            self.bad = Some(self.bad.map_or(probe.rate, |b| b.min(probe.rate)));
        }
    }

    /// The decision after a step at `rate` (counting a refinement when it is one).
    fn decide(&mut self, rate: f64, plan: Plan) -> Decision {
        let refine = self.refinements < MAX_REFINEMENTS;
        let next = match (self.good, self.bad) {
            (_, None) => return Decision::Step(next_rate(rate, plan.factor)),
            (Some(g), Some(b)) if refine && b / g > CLOSE_ENOUGH => (g * b).sqrt().round(),
            (None, Some(b)) if refine && b > 1.0 => (b * plan.back_off).round().max(1.0),
            _ => return Decision::Stop,
        };
        self.refinements += 1;
        Decision::Step(next)
    }
}

/// The accept probe's next burst step after the steps so far at `rate` (`true`: HTTP kept up):
/// the next rate up after a good step; after a bad one the same rate once more, because a
/// single stalled second (a broker's JIT still compiling, a checkpoint) is not the HTTP
/// ceiling; the end after two bad steps in a row.
pub(super) fn next_burst(accepted: &[bool], rate: f64, factor: f64) -> Decision {
    match accepted {
        [.., false, false] => Decision::Stop,
        [.., false] => Decision::Step(rate),
        _ => Decision::Step(next_rate(rate, factor)),
    }
}

/// Replays the decisions over `steps` (each step ran at the rate decided before it).
fn replay(steps: &[Probe], plan: Plan) -> (Bounds, Decision) {
    let mut bounds = Bounds::default();
    let mut decision = Decision::Step(plan.start_rate);
    for &probe in steps {
        bounds.record(probe);
        decision = bounds.decide(probe.rate, plan);
    }
    (bounds, decision)
}

/// The rate of the next ramp step after `steps`, or the end of the search.
pub(super) fn next(steps: &[Probe], plan: Plan) -> Decision {
    replay(steps, plan).1
}

/// What the ramp found after `steps` (whether it stopped or ran out of time).
pub(super) fn found(steps: &[Probe], plan: Plan) -> Found {
    let (bounds, _) = replay(steps, plan);
    let saga_ceiling = bounds.good.unwrap_or(plan.start_rate);
    Found {
        saga_ceiling,
        run_rate: (saga_ceiling / 2.0).round().max(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_probe_climbs_after_a_good_step() {
        assert_eq!(next_burst(&[true], 50.0, 1.5), Decision::Step(75.0));
        assert_eq!(
            next_burst(&[true, false, true], 75.0, 1.5),
            Decision::Step(113.0)
        );
    }

    #[test]
    fn the_accept_probe_repeats_a_bad_step_once_and_stops_after_two_in_a_row() {
        assert_eq!(next_burst(&[true, false], 75.0, 1.5), Decision::Step(75.0));
        assert_eq!(next_burst(&[true, false, false], 75.0, 1.5), Decision::Stop);
        assert_eq!(next_burst(&[false], 50.0, 1.5), Decision::Step(50.0));
        assert_eq!(next_burst(&[false, false], 50.0, 1.5), Decision::Stop);
    }

    const PLAN: Plan = Plan {
        start_rate: 50.0,
        factor: 1.5,
        back_off: 0.5,
    };

    fn ok(rate: f64) -> Probe {
        Probe {
            rate,
            saga_ok: true,
        }
    }

    fn bad(rate: f64) -> Probe {
        Probe {
            rate,
            saga_ok: false,
        }
    }

    #[test]
    fn the_first_step_runs_at_the_start_rate() {
        assert_eq!(next(&[], PLAN), Decision::Step(50.0));
    }

    #[test]
    fn sustainable_steps_grow_geometrically() {
        assert_eq!(next(&[ok(50.0)], PLAN), Decision::Step(75.0));
        assert_eq!(next(&[ok(50.0), ok(75.0)], PLAN), Decision::Step(113.0));
    }

    #[test]
    fn a_bad_step_refines_at_the_geometric_mean() {
        let steps = [ok(50.0), ok(75.0), bad(113.0)];
        // sqrt(75 × 113) = 92.06
        assert_eq!(next(&steps, PLAN), Decision::Step(92.0));
    }

    #[test]
    fn refinement_stops_when_good_and_bad_are_close() {
        // 100 / 92 < 1.15
        let steps = [ok(50.0), ok(92.0), bad(100.0)];
        assert_eq!(next(&steps, PLAN), Decision::Stop);
    }

    #[test]
    fn at_most_two_refinements() {
        let steps = [ok(50.0), bad(200.0), ok(100.0), ok(141.0)];
        // Two refinements made (100, then 141): no third though 200 / 141 > 1.15.
        assert_eq!(next(&steps[..2], PLAN), Decision::Step(100.0));
        assert_eq!(next(&steps[..3], PLAN), Decision::Step(141.0));
        assert_eq!(next(&steps, PLAN), Decision::Stop);
    }

    #[test]
    fn a_bad_first_step_halves_until_refinements_run_out() {
        assert_eq!(next(&[bad(50.0)], PLAN), Decision::Step(25.0));
        assert_eq!(next(&[bad(50.0), bad(25.0)], PLAN), Decision::Step(13.0));
        assert_eq!(
            next(&[bad(50.0), bad(25.0), bad(13.0)], PLAN),
            Decision::Stop
        );
        // A bad rate of 1 cannot be halved.
        assert_eq!(next(&[bad(1.0)], PLAN), Decision::Stop);
    }

    #[test]
    fn the_ceiling_is_the_highest_good_rate() {
        let found = found(&[ok(50.0), ok(75.0), bad(113.0), ok(92.0)], PLAN);
        assert_eq!(
            found,
            Found {
                saga_ceiling: 92.0,
                run_rate: 46.0,
            }
        );
    }

    #[test]
    fn without_a_bad_step_the_ceiling_is_the_last_rate() {
        let found = found(&[ok(50.0), ok(75.0)], PLAN);
        assert_eq!(found.saga_ceiling, 75.0);
        assert_eq!(found.run_rate, 38.0);
    }

    #[test]
    fn without_a_good_step_the_start_rate_stands_in() {
        let found = found(&[bad(50.0), bad(25.0), bad(13.0)], PLAN);
        assert_eq!(found.saga_ceiling, 50.0);
        assert_eq!(found.run_rate, 25.0);
        assert_eq!(super::found(&[], PLAN).run_rate, 25.0);
    }
}
