//! Pending → Queued.
//!
//! A Pending item is admitted when every dependency has Succeeded and its not-before
//! has passed. A dependency that ended Failed, DeadLettered or Cancelled fails the
//! item with reason [`DEPENDENCY_FAILED`]; the failure cascades, since each dependent
//! fails in turn. DeadLettered counts as failed although a redrive can revive it:
//! dependents should not sit Pending for days behind a dead letter, and a redrive of
//! the dependency does not need the dependents. A dependency that does not exist (yet)
//! is waited for: items of one request are created in dependency order, but a user's
//! own items may be applied in any order.

use jiff::Timestamp;

use super::waiting::Why;
use crate::api::Phase;

/// `lastError.reason` for an item whose dependency failed.
pub const DEPENDENCY_FAILED: &str = "DependencyFailed";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Admit,
    Wait { why: Why },
    FailDependency { dependency: String },
}

/// Decides for a Pending item. `dependency` looks a dependency up by name: `None` when
/// it does not exist, `Some(None)` when it exists without status, `Some(Some(phase))`.
/// Dependencies are checked in order; a failed one anywhere wins over one not done.
pub fn admit(
    depends_on: &[String],
    dependency: impl Fn(&str) -> Option<Option<Phase>>,
    not_before: Option<Timestamp>,
    now: Timestamp,
) -> Admission {
    let mut unmet = None;
    for name in depends_on {
        match dependency(name) {
            Some(Some(Phase::Succeeded)) => {}
            Some(Some(Phase::Failed | Phase::DeadLettered | Phase::Cancelled)) => {
                return Admission::FailDependency {
                    dependency: name.clone(),
                };
            }
            _ => {
                unmet.get_or_insert(name);
            }
        }
    }
    if let Some(name) = unmet {
        return Admission::Wait {
            why: Why::Dependency { name: name.clone() },
        };
    }
    match not_before {
        Some(at) if at > now => Admission::Wait {
            why: Why::NotBefore { at },
        },
        _ => Admission::Admit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testutil::t;
    use std::collections::BTreeMap;

    fn deps(list: &[(&str, Option<Phase>)]) -> BTreeMap<String, Option<Phase>> {
        list.iter().map(|(n, p)| (n.to_string(), *p)).collect()
    }

    fn run(
        names: &[&str],
        known: &BTreeMap<String, Option<Phase>>,
        not_before: Option<Timestamp>,
    ) -> Admission {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        admit(&names, |n| known.get(n).copied(), not_before, t(100))
    }

    #[test]
    fn no_dependencies_no_not_before_admits() {
        assert_eq!(run(&[], &deps(&[]), None), Admission::Admit);
    }

    #[test]
    fn all_succeeded_admits() {
        let known = deps(&[("a", Some(Phase::Succeeded)), ("b", Some(Phase::Succeeded))]);
        assert_eq!(run(&["a", "b"], &known, None), Admission::Admit);
    }

    #[test]
    fn waits_for_first_unfinished_or_missing_dependency() {
        let known = deps(&[
            ("a", Some(Phase::Succeeded)),
            ("b", Some(Phase::Running)),
            ("c", None),
        ]);
        let wait = |name: &str| Admission::Wait {
            why: Why::Dependency { name: name.into() },
        };
        assert_eq!(run(&["a", "b", "c"], &known, None), wait("b"));
        assert_eq!(run(&["c", "b"], &known, None), wait("c"), "no status yet");
        assert_eq!(
            run(&["a", "missing"], &known, None),
            wait("missing"),
            "not created yet"
        );
        for p in [Phase::Pending, Phase::Queued, Phase::Backoff, Phase::Held] {
            assert_eq!(
                run(&["x"], &deps(&[("x", Some(p))]), None),
                wait("x"),
                "{p}"
            );
        }
    }

    #[test]
    fn failed_dependency_fails_even_behind_an_unfinished_one() {
        for p in [Phase::Failed, Phase::DeadLettered, Phase::Cancelled] {
            let known = deps(&[("a", Some(Phase::Running)), ("b", Some(p))]);
            assert_eq!(
                run(&["a", "b"], &known, None),
                Admission::FailDependency {
                    dependency: "b".into()
                },
                "{p}"
            );
        }
    }

    #[test]
    fn not_before_waits_until_it_passes() {
        assert_eq!(
            run(&[], &deps(&[]), Some(t(101))),
            Admission::Wait {
                why: Why::NotBefore { at: t(101) }
            }
        );
        assert_eq!(run(&[], &deps(&[]), Some(t(100))), Admission::Admit);
    }

    #[test]
    fn dependency_reason_before_not_before() {
        let known = deps(&[("a", Some(Phase::Running))]);
        assert!(matches!(
            run(&["a"], &known, Some(t(500))),
            Admission::Wait {
                why: Why::Dependency { .. }
            }
        ));
    }
}
