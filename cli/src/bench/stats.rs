//! Pure helpers of the benchmarks: percentiles, the open-loop schedule, the ramp decision.
//! No I/O and no clocks here, so all of it is unit-tested.

use std::time::Duration;

/// Nearest-rank percentile (`p` in 0..=1) of an ascending slice; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let p = p.clamp(0.0, 1.0);
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// p50 / p95 / p99 of unsorted samples (sorted in place).
pub fn summary(samples: &mut [f64]) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    Percentiles {
        p50: percentile(samples, 0.50),
        p95: percentile(samples, 0.95),
        p99: percentile(samples, 0.99),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Open loop: request `i` of a run at `rate`/s is due at `i / rate` after the start, whatever
/// happened to the requests before it. Latency is measured from this intended time, so a
/// stall delays every request due during it (no coordinated omission).
pub fn due(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// Requests in a step of `secs` at `rate`/s (at least one).
pub fn requests_in(rate: f64, secs: f64) -> u64 {
    ((rate * secs).round() as u64).max(1)
}

/// The next rate of a geometric ramp (always at least one more request per second).
pub fn next_rate(rate: f64, factor: f64) -> f64 {
    (rate * factor).max(rate + 1.0).round()
}

/// What a ramp step measured.
#[derive(Debug, Clone, Default)]
pub struct StepOutcome {
    /// Offered (scheduled) requests.
    pub offered: u64,
    /// Requests answered 202.
    pub accepted: u64,
    /// Requests that failed (transport error, non-202, client saturated).
    pub errors: u64,
    /// HTTP accept latency p99 from the intended send time (ms).
    pub accept_p99_ms: f64,
    /// Accepted orders whose saga reached APPROVED or REJECTED within the grace period.
    pub completed: u64,
    /// POST → terminal saga p99 from the intended send time (ms); a saga not finished within
    /// the grace period counts at the grace period.
    pub saga_p99_ms: f64,
    /// How much the sagas in flight (accepted, not ended) grew over the steady window, by
    /// their trend ([`backlog_growth`]): a backlog that grows means the sagas are falling
    /// behind, whatever the latencies of the orders that did finish say. 0 where not
    /// measured (burst steps).
    pub backlog_growth: i64,
    /// How much the read side's backlog (verdicts not yet in the read model or not yet
    /// notified) grew over the steady window, by its trend: a rate the sagas keep up with but
    /// the read side does not is not sustainable either. 0 where not measured.
    pub read_side_growth: i64,
}

/// Bounds of a sustainable step.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_accept_p99_ms: f64,
    pub max_saga_p99_ms: f64,
    /// Share of offered requests that may fail or go missing.
    pub max_loss: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// HTTP kept up: (almost) every offered order was accepted, fast enough.
    pub accept_ok: bool,
    /// The sagas kept up as well: (almost) every accepted order completed, fast enough.
    pub saga_ok: bool,
}

/// How much the sagas in flight grew over a window of `secs`, from samples `(seconds into the
/// window, sagas in flight)` taken through it: the least-squares slope times the window.
///
/// A trend rather than the last sample minus the first: the count at one instant is rate ×
/// the latency of that instant, so a single slow moment at the window's close (a checkpoint,
/// a relay pass that waited) read as a backlog that grew by a hundred, in a step whose sagas
/// had all completed with a p99 of 560 ms. A backlog that really grows rises through the
/// window, and its slope says so. Fewer than two distinct sample times give 0.
pub fn backlog_growth(samples: &[(f64, i64)], secs: f64) -> i64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0;
    }
    let mean_t = samples.iter().map(|(t, _)| t).sum::<f64>() / n;
    let mean_c = samples.iter().map(|(_, c)| *c as f64).sum::<f64>() / n;
    let spread: f64 = samples.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    if spread <= f64::EPSILON {
        return 0;
    }
    let covariance: f64 = samples
        .iter()
        .map(|(t, c)| (t - mean_t) * (*c as f64 - mean_c))
        .sum();
    (covariance / spread * secs).round() as i64
}

/// How much the in-flight sagas may grow over a steady window before the step counts as
/// falling behind: 2 % of the window's accepted orders, at least 25 (the in-flight count at
/// a sustainable rate is rate × latency and jitters by about a batch).
pub fn backlog_tolerance(accepted: u64) -> i64 {
    ((accepted as f64 * 0.02).round() as i64).max(25)
}

/// Whether a step's rate is sustainable: accepted ≥ (1 − loss) × offered with p99 under the
/// bound, and completed ≥ (1 − loss) × accepted with saga p99 under its bound and neither the
/// sagas in flight nor the read side's backlog growing.
pub fn judge(step: &StepOutcome, limits: &Limits) -> Verdict {
    let offered = step.offered.max(1) as f64;
    let accept_ok = step.accepted as f64 >= (1.0 - limits.max_loss) * offered
        && step.errors as f64 <= limits.max_loss * offered
        && step.accept_p99_ms <= limits.max_accept_p99_ms;
    let saga_ok = accept_ok
        && step.completed as f64 >= (1.0 - limits.max_loss) * step.accepted.max(1) as f64
        && step.saga_p99_ms <= limits.max_saga_p99_ms
        && step.backlog_growth <= backlog_tolerance(step.accepted)
        && step.read_side_growth <= backlog_tolerance(step.accepted);
    Verdict { accept_ok, saga_ok }
}

/// `value / baseline`, rounded to three decimals (NaN-safe: 0 when the baseline is 0).
pub fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline > 0.0 && value.is_finite() {
        (value / baseline * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

/// Milliseconds rounded to two decimals; NaN (no samples) becomes JSON null via `Option`.
pub fn ms(value: f64) -> Option<f64> {
    value.is_finite().then(|| (value * 100.0).round() / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One sample a second over a 15 s window.
    fn each_second(count: impl Fn(usize) -> i64) -> Vec<(f64, i64)> {
        (0..=15).map(|t| (t as f64, count(t))).collect()
    }

    #[test]
    fn a_backlog_rising_through_the_window_grows_by_its_rise() {
        // 10 more sagas in flight every second: 150 over the window.
        let rising = each_second(|t| 40 + 10 * t as i64);
        assert_eq!(backlog_growth(&rising, 15.0), 150);
        assert!(backlog_growth(&rising, 15.0) > backlog_tolerance(3_000));
    }

    #[test]
    fn a_slow_moment_at_the_close_is_not_a_growing_backlog() {
        // Flat at 40, then 130 at the closing instant: the two snapshots said +90.
        let spike = each_second(|t| if t == 15 { 130 } else { 40 });
        let growth = backlog_growth(&spike, 15.0);
        assert!(growth <= backlog_tolerance(3_000), "growth {growth}");
        assert!(growth > 0, "the spike still counts for something");
    }

    #[test]
    fn a_flat_or_draining_backlog_does_not_grow() {
        assert_eq!(backlog_growth(&each_second(|_| 40), 15.0), 0);
        assert!(backlog_growth(&each_second(|t| 200 - 10 * t as i64), 15.0) < 0);
    }

    #[test]
    fn too_few_samples_say_nothing() {
        assert_eq!(backlog_growth(&[], 15.0), 0);
        assert_eq!(backlog_growth(&[(3.0, 90)], 15.0), 0);
        assert_eq!(backlog_growth(&[(3.0, 10), (3.0, 90)], 15.0), 0);
        // Two samples at the ends: the difference, as before.
        assert_eq!(backlog_growth(&[(0.0, 10), (15.0, 90)], 15.0), 80);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = summary(&mut samples);
        assert_eq!(p.p50, 51.0);
        assert_eq!(p.p95, 95.0);
        assert_eq!(p.p99, 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(percentile(&[1.0, 2.0], 1.5), 2.0);
    }

    #[test]
    fn the_schedule_is_fixed_by_rate_not_by_answers() {
        assert_eq!(due(0, 100.0), Duration::ZERO);
        assert_eq!(due(50, 100.0), Duration::from_millis(500));
        assert_eq!(due(3000, 1000.0), Duration::from_secs(3));
        assert_eq!(requests_in(250.0, 2.0), 500);
        assert_eq!(requests_in(0.1, 1.0), 1);
    }

    #[test]
    fn the_ramp_grows_geometrically_and_always_grows() {
        assert_eq!(next_rate(100.0, 1.5), 150.0);
        assert_eq!(next_rate(1.0, 1.1), 2.0);
    }

    fn step() -> StepOutcome {
        StepOutcome {
            offered: 1000,
            accepted: 1000,
            errors: 0,
            accept_p99_ms: 10.0,
            completed: 1000,
            saga_p99_ms: 200.0,
            backlog_growth: 0,
            read_side_growth: 0,
        }
    }

    const LIMITS: Limits = Limits {
        max_accept_p99_ms: 100.0,
        max_saga_p99_ms: 1000.0,
        max_loss: 0.01,
    };

    #[test]
    fn a_step_within_bounds_is_sustainable() {
        let verdict = judge(&step(), &LIMITS);
        assert_eq!(
            verdict,
            Verdict {
                accept_ok: true,
                saga_ok: true
            }
        );
    }

    #[test]
    fn slow_or_lossy_accepts_fail_both() {
        let slow = StepOutcome {
            accept_p99_ms: 150.0,
            ..step()
        };
        assert!(!judge(&slow, &LIMITS).accept_ok);
        assert!(!judge(&slow, &LIMITS).saga_ok);
        let lossy = StepOutcome {
            accepted: 980,
            errors: 20,
            ..step()
        };
        assert!(!judge(&lossy, &LIMITS).accept_ok);
    }

    #[test]
    fn sagas_falling_behind_fail_only_the_saga_verdict() {
        let behind = StepOutcome {
            completed: 900,
            ..step()
        };
        assert_eq!(
            judge(&behind, &LIMITS),
            Verdict {
                accept_ok: true,
                saga_ok: false
            }
        );
        let slow = StepOutcome {
            saga_p99_ms: 1500.0,
            ..step()
        };
        assert!(!judge(&slow, &LIMITS).saga_ok);
    }

    #[test]
    fn a_growing_backlog_is_not_sustainable_even_with_good_latencies() {
        // 1000 accepted: 20 may be noise, but the floor is 25.
        let jitter = StepOutcome {
            backlog_growth: 25,
            ..step()
        };
        assert!(judge(&jitter, &LIMITS).saga_ok);
        let growing = StepOutcome {
            backlog_growth: 26,
            ..step()
        };
        assert_eq!(
            judge(&growing, &LIMITS),
            Verdict {
                accept_ok: true,
                saga_ok: false
            }
        );
        assert_eq!(backlog_tolerance(10_000), 200);
    }

    #[test]
    fn a_read_side_falling_behind_is_not_sustainable_even_when_the_sagas_keep_up() {
        let read_side_behind = StepOutcome {
            read_side_growth: 26,
            ..step()
        };
        assert_eq!(
            judge(&read_side_behind, &LIMITS),
            Verdict {
                accept_ok: true,
                saga_ok: false
            }
        );
        let jitter = StepOutcome {
            read_side_growth: 25,
            ..step()
        };
        assert!(judge(&jitter, &LIMITS).saga_ok);
    }

    #[test]
    fn ratios_and_milliseconds_round() {
        assert_eq!(ratio(500.0, 1000.0), 0.5);
        assert_eq!(ratio(1.0, 3.0), 0.333);
        assert_eq!(ratio(5.0, 0.0), 0.0);
        assert_eq!(ms(1.23456), Some(1.23));
        assert_eq!(ms(f64::NAN), None);
    }
}
