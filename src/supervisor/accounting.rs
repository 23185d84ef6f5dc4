//! Turning what running items report (cumulative usage and violation counts per
//! attempt) into increments of the supervisor's counters. Pure and unit-tested.
//!
//! Items the supervisor finds when it (re)starts are taken as a baseline, not counted:
//! the previous supervisor process counted them, and counting again would double them.

use crate::api::Counters;

/// What was last counted of one item.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    pub attempt: i32,
    pub usage: Counters,
    pub violations: u32,
}

/// The increments since `prev` (per counter, and violations), and the new record.
/// `baseline`: first sight at start-up; nothing is counted.
pub fn account(
    prev: Option<&Seen>,
    attempt: i32,
    usage: &Counters,
    violations: u32,
    baseline: bool,
) -> (Vec<(String, f64)>, u32, Seen) {
    let seen = Seen {
        attempt,
        usage: usage.clone(),
        violations,
    };
    if baseline && prev.is_none() {
        return (vec![], 0, seen);
    }
    let same = prev.filter(|p| p.attempt == attempt);
    let used = usage
        .iter()
        .filter_map(|(k, v)| {
            let before = same.and_then(|p| p.usage.get(k)).copied().unwrap_or(0.0);
            let d = v - before;
            (d.is_finite() && d > 0.0).then(|| (k.clone(), d))
        })
        .collect();
    let before = same.map_or(0, |p| p.violations);
    (used, violations.saturating_sub(before), seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(pairs: &[(&str, f64)]) -> Counters {
        pairs.iter().map(|(k, v)| ((*k).into(), *v)).collect()
    }

    #[test]
    fn counts_increases_within_an_attempt_and_restarts_with_the_next() {
        let (d, v, s1) = account(None, 1, &c(&[("tokens", 100.0)]), 1, false);
        assert_eq!((d, v), (vec![("tokens".into(), 100.0)], 1));
        let (d, v, s2) = account(
            Some(&s1),
            1,
            &c(&[("tokens", 250.0), ("cost", 0.5)]),
            3,
            false,
        );
        assert_eq!(
            (d, v),
            (vec![("cost".into(), 0.5), ("tokens".into(), 150.0)], 2)
        );
        let (d, v, s3) = account(Some(&s2), 1, &c(&[("tokens", 250.0)]), 3, false);
        assert_eq!((d, v), (vec![], 0), "nothing new");
        let (d, v, _) = account(Some(&s3), 2, &c(&[("tokens", 40.0)]), 1, false);
        assert_eq!(
            (d, v),
            (vec![("tokens".into(), 40.0)], 1),
            "a new attempt counts from zero"
        );
    }

    #[test]
    fn first_sight_at_startup_is_a_baseline() {
        let (d, v, s) = account(None, 3, &c(&[("tokens", 900.0)]), 2, true);
        assert_eq!((d, v), (vec![], 0));
        let (d, v, _) = account(Some(&s), 3, &c(&[("tokens", 1000.0)]), 2, true);
        assert_eq!((d, v), (vec![("tokens".into(), 100.0)], 0));
    }

    #[test]
    fn decreases_and_bad_numbers_count_nothing() {
        let s = Seen {
            attempt: 1,
            usage: c(&[("tokens", 100.0)]),
            violations: 2,
        };
        let (d, v, _) = account(
            Some(&s),
            1,
            &c(&[("tokens", 50.0), ("x", f64::NAN)]),
            1,
            false,
        );
        assert_eq!((d, v), (vec![], 0));
    }
}
