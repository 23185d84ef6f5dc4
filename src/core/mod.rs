//! Pure decisions: functions of (inputs, now) → decisions.
//!
//! Nothing here talks to Kubernetes, reads a clock, does I/O or draws randomness on
//! its own: `now` and any randomness (a jitter fraction or an `&mut impl Rng`) are
//! parameters, so every decision is reproducible in a unit test. The roles
//! (`scheduler`, `pool`, `agent`, `supervisor`) feed watch-cache state in and write the
//! decisions out; `core` depends on `api` only.
//!
//! | Module | Decides |
//! |---|---|
//! | [`phase`] | legal phase transitions per writer, claimability, retention |
//! | [`retry`] | backoff delay; what follows an attempt; escalation policy |
//! | [`graph`] | WorkRequest validation (names, dependencies, cycles) and item planning |
//! | [`cycle`] | dependency cycles among existing items (applied one by one, not planned) |
//! | [`attempt_log`] | which lines of an agent's log are one attempt's |
//! | [`admission`] | Pending → Queued, wait, or fail on a failed dependency |
//! | [`routing`] | which queue an item runs on |
//! | [`ordering`] | effective priority with aging, candidate and queue choice |
//! | [`waiting`] | "why is it waiting": reason code and short message |
//! | [`rollup`] | request and queue status from item phases |
//! | [`supervision`] | lease staleness, monitors' signals, the supervisor's ladder |
//! | [`report`] | parsing the work command's report channel |

pub mod admission;
pub mod attempt_log;
pub mod cycle;
pub mod graph;
pub mod ordering;
pub mod phase;
pub mod report;
pub mod retry;
pub mod rollup;
pub mod routing;
pub mod supervision;
pub mod waiting;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The timestamp inside an optional API `Time`.
pub(crate) fn ts(t: Option<&Time>) -> Option<Timestamp> {
    t.map(|t| t.0)
}

/// `t + d`, saturating at the ends of jiff's range instead of failing: decisions must
/// not panic or error on absurd (user-supplied) durations.
pub(crate) fn add(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.saturating_add(d).unwrap_or(if d.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// `std::time::Duration` → `SignedDuration`, saturating.
pub(crate) fn signed(d: std::time::Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// Whole seconds from `since` to `now`, never negative (clocks skew).
pub(crate) fn seconds_since(since: Timestamp, now: Timestamp) -> i64 {
    now.duration_since(since).as_secs().max(0)
}

#[cfg(test)]
pub(crate) mod testutil {
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// A fixed, readable epoch for tests: 2030-01-01T00:00:00Z plus `s` seconds.
    pub fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_893_456_000 + s).unwrap()
    }

    pub fn time(s: i64) -> Time {
        Time(t(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testutil::t;

    #[test]
    fn add_saturates_instead_of_failing() {
        assert_eq!(add(t(0), SignedDuration::MAX), Timestamp::MAX);
        assert_eq!(add(t(0), SignedDuration::MIN), Timestamp::MIN);
        assert_eq!(add(t(0), SignedDuration::from_secs(5)), t(5));
    }

    #[test]
    fn seconds_since_clamps_future_to_zero() {
        assert_eq!(seconds_since(t(10), t(0)), 0);
        assert_eq!(seconds_since(t(0), t(10)), 10);
    }

    #[test]
    fn signed_saturates() {
        assert_eq!(
            signed(std::time::Duration::MAX),
            SignedDuration::MAX,
            "u64::MAX seconds does not fit a SignedDuration"
        );
        assert_eq!(
            signed(std::time::Duration::from_secs(3)),
            SignedDuration::from_secs(3)
        );
    }

    #[test]
    fn ts_unwraps_api_time() {
        assert_eq!(ts(Some(&testutil::time(7))), Some(t(7)));
        assert_eq!(ts(None), None);
    }
}
