//! "Why is it waiting": one reason per non-running item, as a stable code (for
//! conditions and metrics) and a short message (for `status.waiting`, shown in the
//! `Why` printer column, so at most [`MAX_MESSAGE`] characters).
//!
//! [`explain`] picks the reason that must clear *first* for the item to run, so the
//! message always names the thing to fix: held > dependency cycle > dependency >
//! not-before > backoff > routing > no agent pool > maxInFlight > position.

use jiff::Timestamp;

use super::cycle::{DEPENDENCY_CYCLE, DEPENDS_ON_CYCLE, ItemCycle, render};
use super::routing::Route;
use crate::api::Phase;

/// Longest message [`Why::message`] returns.
pub const MAX_MESSAGE: usize = 80;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// On a dependency cycle among items: nothing on it can ever run as it stands.
    /// `path` starts and ends with the item.
    DependencyCycle {
        path: Vec<String>,
    },
    /// Waits, directly or through others, on a dependency cycle it is not part of.
    BehindCycle {
        cycle: Vec<String>,
    },
    /// A dependency has not succeeded yet (or does not exist yet).
    Dependency {
        name: String,
    },
    NotBefore {
        at: Timestamp,
    },
    Backoff {
        until: Timestamp,
    },
    /// No queue lists the item's type.
    NoQueueForType {
        type_: String,
    },
    /// The item names a queue that does not exist.
    QueueMissing {
        queue: String,
    },
    /// Several queues list the item's type; Triad will not pick one silently.
    AmbiguousType {
        type_: String,
        queues: Vec<String>,
    },
    /// The queue runs `running` items, its maxInFlight.
    MaxInFlight {
        queue: String,
        running: i64,
    },
    NoAgentPool {
        queue: String,
    },
    /// 1-based position among the queue's claimable items.
    Position {
        n: usize,
        of: usize,
    },
    /// Escalated; waiting for the escalation policy (or a person, without one).
    Held {
        reason: Option<String>,
    },
}

impl Why {
    /// A CamelCase reason, usable as a condition reason.
    pub fn code(&self) -> &'static str {
        match self {
            Why::DependencyCycle { .. } => DEPENDENCY_CYCLE,
            Why::BehindCycle { .. } => DEPENDS_ON_CYCLE,
            Why::Dependency { .. } => "WaitingForDependency",
            Why::NotBefore { .. } => "NotBefore",
            Why::Backoff { .. } => "Backoff",
            Why::NoQueueForType { .. } | Why::QueueMissing { .. } => "QueueNotFound",
            Why::AmbiguousType { .. } => "AmbiguousType",
            Why::MaxInFlight { .. } => "MaxInFlight",
            Why::NoAgentPool { .. } => "NoAgentPool",
            Why::Position { .. } => "Queued",
            Why::Held { .. } => "Held",
        }
    }

    /// At most [`MAX_MESSAGE`] characters; long names are cut with "…".
    pub fn message(&self) -> String {
        let s = match self {
            Why::DependencyCycle { path } => format!("dependency cycle: {}", render(path)),
            Why::BehindCycle { cycle } => format!("waits on dependency cycle {}", render(cycle)),
            Why::Dependency { name } => format!("waiting for dependency {name}"),
            Why::NotBefore { at } => format!("not before {at:.0}"),
            Why::Backoff { until } => format!("backoff until {until:.0}"),
            Why::NoQueueForType { type_ } => format!("no queue accepts type {type_}"),
            Why::QueueMissing { queue } => format!("queue {queue} not found"),
            Why::AmbiguousType { type_, queues } => {
                format!("queues {} all accept type {type_}", queues.join(", "))
            }
            Why::MaxInFlight { queue, running } => {
                format!("queue {queue} at maxInFlight ({running} running)")
            }
            Why::NoAgentPool { queue } => format!("no agent pool serves queue {queue}"),
            Why::Position { n, of } => format!("position {n} of {of} in queue"),
            Why::Held { reason: None } => "held for escalation".into(),
            Why::Held { reason: Some(r) } => format!("held for escalation: {r}"),
        };
        truncate(s, MAX_MESSAGE)
    }

    /// When the reason clears by itself, if it does: the scheduler re-checks then.
    pub fn recheck_at(&self) -> Option<Timestamp> {
        match self {
            Why::NotBefore { at } => Some(*at),
            Why::Backoff { until } => Some(*until),
            _ => None,
        }
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// Cuts `s` to at most `max` characters, ending in "…" when cut.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let cut = s
        .char_indices()
        .nth(max.saturating_sub(1))
        .map_or(s.len(), |(i, _)| i);
    s.truncate(cut);
    s.push('…');
    s
}

/// What the scheduler knows about a non-running item, from its watch caches.
#[derive(Clone, Debug)]
pub struct WaitContext<'a> {
    pub phase: Phase,
    /// The first dependency that has not succeeded, if any.
    pub unmet_dependency: Option<&'a str>,
    /// A dependency cycle the item is on or waits on, when one was looked for and found.
    pub cycle: Option<&'a ItemCycle>,
    pub not_before: Option<Timestamp>,
    pub retry_at: Option<Timestamp>,
    pub route: &'a Route,
    /// Whether any agent pool lists the routed queue.
    pub pool_serves_queue: bool,
    /// Items of the queue running now, and its maxInFlight.
    pub running_in_queue: i64,
    pub max_in_flight: Option<i32>,
    /// Position among claimable items (1-based) and how many there are.
    pub position: Option<(usize, usize)>,
    /// For Held items: why it was escalated.
    pub held_reason: Option<&'a str>,
}

/// The one reason to show, or None for an item that is not waiting (running or
/// finished, or Queued with nothing known to hold it back).
pub fn explain(ctx: &WaitContext<'_>, now: Timestamp) -> Option<Why> {
    match ctx.phase {
        Phase::Held => {
            return Some(Why::Held {
                reason: ctx.held_reason.map(Into::into),
            });
        }
        Phase::Pending | Phase::Queued | Phase::Backoff => {}
        _ => return None,
    }
    // A cycle before the dependency it shows up as: waiting for that dependency is
    // waiting forever.
    match ctx.cycle {
        Some(ItemCycle::On { path }) => return Some(Why::DependencyCycle { path: path.clone() }),
        Some(ItemCycle::Behind { cycle, .. }) => {
            return Some(Why::BehindCycle {
                cycle: cycle.clone(),
            });
        }
        None => {}
    }
    if let Some(name) = ctx.unmet_dependency {
        return Some(Why::Dependency { name: name.into() });
    }
    if let Some(at) = ctx.not_before.filter(|t| *t > now) {
        return Some(Why::NotBefore { at });
    }
    if let Some(until) = ctx.retry_at.filter(|t| *t > now) {
        return Some(Why::Backoff { until });
    }
    let queue = match ctx.route {
        Route::To(q) => q,
        Route::NoQueueForType { type_ } => {
            return Some(Why::NoQueueForType {
                type_: type_.clone(),
            });
        }
        Route::QueueMissing { queue } => {
            return Some(Why::QueueMissing {
                queue: queue.clone(),
            });
        }
        Route::AmbiguousType { type_, queues } => {
            return Some(Why::AmbiguousType {
                type_: type_.clone(),
                queues: queues.clone(),
            });
        }
    };
    if !ctx.pool_serves_queue {
        return Some(Why::NoAgentPool {
            queue: queue.clone(),
        });
    }
    if let Some(max) = ctx.max_in_flight
        && ctx.running_in_queue >= i64::from(max)
    {
        return Some(Why::MaxInFlight {
            queue: queue.clone(),
            running: ctx.running_in_queue,
        });
    }
    ctx.position.map(|(n, of)| Why::Position { n, of })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testutil::t;

    fn all_reasons() -> Vec<Why> {
        let long = "x".repeat(63);
        vec![
            Why::DependencyCycle {
                path: vec![long.clone(); 3],
            },
            Why::BehindCycle {
                cycle: vec![long.clone(); 3],
            },
            Why::Dependency { name: long.clone() },
            Why::NotBefore { at: t(0) },
            Why::Backoff { until: t(0) },
            Why::NoQueueForType {
                type_: long.clone(),
            },
            Why::QueueMissing {
                queue: long.clone(),
            },
            Why::AmbiguousType {
                type_: long.clone(),
                queues: vec![long.clone(), long.clone()],
            },
            Why::MaxInFlight {
                queue: long.clone(),
                running: i64::MAX,
            },
            Why::NoAgentPool {
                queue: long.clone(),
            },
            Why::Position {
                n: usize::MAX,
                of: usize::MAX,
            },
            Why::Held {
                reason: Some(long.repeat(4)),
            },
        ]
    }

    #[test]
    fn messages_fit_the_column() {
        for why in all_reasons() {
            let m = why.message();
            assert!(m.chars().count() <= MAX_MESSAGE, "{m}");
            assert!(!m.is_empty());
        }
    }

    #[test]
    fn messages_say_what_waits() {
        let ab = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Why::DependencyCycle {
                path: ab(&["a", "b", "a"])
            }
            .message(),
            "dependency cycle: a → b → a"
        );
        assert_eq!(
            Why::BehindCycle {
                cycle: ab(&["a", "b", "a"])
            }
            .message(),
            "waits on dependency cycle a → b → a"
        );
        assert_eq!(
            Why::Dependency { name: "a".into() }.message(),
            "waiting for dependency a"
        );
        assert_eq!(
            Why::NotBefore { at: t(0) }.message(),
            "not before 2030-01-01T00:00:00Z"
        );
        assert_eq!(
            Why::Backoff { until: t(61) }.message(),
            "backoff until 2030-01-01T00:01:01Z"
        );
        assert_eq!(
            Why::NoQueueForType {
                type_: "pdf".into()
            }
            .message(),
            "no queue accepts type pdf"
        );
        assert_eq!(
            Why::QueueMissing { queue: "q".into() }.message(),
            "queue q not found"
        );
        assert_eq!(
            Why::AmbiguousType {
                type_: "pdf".into(),
                queues: vec!["a".into(), "b".into()]
            }
            .message(),
            "queues a, b all accept type pdf"
        );
        assert_eq!(
            Why::MaxInFlight {
                queue: "q".into(),
                running: 4
            }
            .message(),
            "queue q at maxInFlight (4 running)"
        );
        assert_eq!(
            Why::NoAgentPool { queue: "q".into() }.message(),
            "no agent pool serves queue q"
        );
        assert_eq!(
            Why::Position { n: 3, of: 10 }.message(),
            "position 3 of 10 in queue"
        );
        assert_eq!(Why::Held { reason: None }.message(), "held for escalation");
        assert_eq!(
            Why::Held {
                reason: Some("Violation".into())
            }
            .to_string(),
            "held for escalation: Violation"
        );
    }

    #[test]
    fn codes_are_condition_reasons() {
        let codes: Vec<_> = all_reasons().iter().map(Why::code).collect();
        assert_eq!(
            codes,
            [
                "DependencyCycle",
                "DependsOnCycle",
                "WaitingForDependency",
                "NotBefore",
                "Backoff",
                "QueueNotFound",
                "QueueNotFound",
                "AmbiguousType",
                "MaxInFlight",
                "NoAgentPool",
                "Queued",
                "Held"
            ]
        );
    }

    #[test]
    fn recheck_only_for_timed_reasons() {
        assert_eq!(Why::NotBefore { at: t(5) }.recheck_at(), Some(t(5)));
        assert_eq!(Why::Backoff { until: t(6) }.recheck_at(), Some(t(6)));
        assert_eq!(Why::Dependency { name: "a".into() }.recheck_at(), None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééééé".into(), 3), "éé…");
        assert_eq!(truncate("abc".into(), 3), "abc");
    }

    fn ctx(route: &Route) -> WaitContext<'_> {
        WaitContext {
            phase: Phase::Queued,
            unmet_dependency: None,
            cycle: None,
            not_before: None,
            retry_at: None,
            route,
            pool_serves_queue: true,
            running_in_queue: 0,
            max_in_flight: None,
            position: Some((2, 5)),
            held_reason: None,
        }
    }

    #[test]
    fn explain_each_case() {
        let to_q = Route::To("q".into());
        assert_eq!(
            explain(&ctx(&to_q), t(0)),
            Some(Why::Position { n: 2, of: 5 })
        );

        let c = WaitContext {
            unmet_dependency: Some("a"),
            ..ctx(&to_q)
        };
        assert_eq!(
            explain(&c, t(0)),
            Some(Why::Dependency { name: "a".into() })
        );

        let c = WaitContext {
            not_before: Some(t(10)),
            ..ctx(&to_q)
        };
        assert_eq!(explain(&c, t(0)), Some(Why::NotBefore { at: t(10) }));
        assert_eq!(
            explain(&c, t(10)),
            Some(Why::Position { n: 2, of: 5 }),
            "passed"
        );

        let c = WaitContext {
            phase: Phase::Backoff,
            retry_at: Some(t(10)),
            ..ctx(&to_q)
        };
        assert_eq!(explain(&c, t(0)), Some(Why::Backoff { until: t(10) }));

        let none = Route::NoQueueForType {
            type_: "pdf".into(),
        };
        assert_eq!(
            explain(&ctx(&none), t(0)),
            Some(Why::NoQueueForType {
                type_: "pdf".into()
            })
        );
        let missing = Route::QueueMissing { queue: "z".into() };
        assert_eq!(
            explain(&ctx(&missing), t(0)),
            Some(Why::QueueMissing { queue: "z".into() })
        );
        let two = Route::AmbiguousType {
            type_: "pdf".into(),
            queues: vec!["a".into(), "b".into()],
        };
        assert_eq!(explain(&ctx(&two), t(0)).unwrap().code(), "AmbiguousType");

        let c = WaitContext {
            pool_serves_queue: false,
            ..ctx(&to_q)
        };
        assert_eq!(
            explain(&c, t(0)),
            Some(Why::NoAgentPool { queue: "q".into() })
        );

        let c = WaitContext {
            running_in_queue: 3,
            max_in_flight: Some(3),
            ..ctx(&to_q)
        };
        assert_eq!(
            explain(&c, t(0)),
            Some(Why::MaxInFlight {
                queue: "q".into(),
                running: 3
            })
        );
        let c = WaitContext {
            running_in_queue: 2,
            max_in_flight: Some(3),
            ..ctx(&to_q)
        };
        assert_eq!(explain(&c, t(0)), Some(Why::Position { n: 2, of: 5 }));

        let c = WaitContext {
            phase: Phase::Held,
            held_reason: Some("Stalled"),
            unmet_dependency: Some("a"),
            ..ctx(&to_q)
        };
        assert_eq!(
            explain(&c, t(0)),
            Some(Why::Held {
                reason: Some("Stalled".into())
            })
        );
    }

    #[test]
    fn a_cycle_is_named_instead_of_the_dependency() {
        let to_q = Route::To("q".into());
        let on = ItemCycle::On {
            path: vec!["a".into(), "b".into(), "a".into()],
        };
        let c = WaitContext {
            phase: Phase::Pending,
            unmet_dependency: Some("b"),
            cycle: Some(&on),
            ..ctx(&to_q)
        };
        assert_eq!(
            explain(&c, t(0)),
            Some(Why::DependencyCycle {
                path: vec!["a".into(), "b".into(), "a".into()]
            })
        );
        let behind = ItemCycle::Behind {
            via: vec!["c".into(), "a".into()],
            cycle: vec!["a".into(), "b".into(), "a".into()],
        };
        let c = WaitContext {
            cycle: Some(&behind),
            ..c
        };
        assert_eq!(explain(&c, t(0)).unwrap().code(), "DependsOnCycle");
        // Held still wins: the escalation is what a person must look at first.
        let c = WaitContext {
            phase: Phase::Held,
            ..c
        };
        assert_eq!(explain(&c, t(0)).unwrap().code(), "Held");
    }

    #[test]
    fn first_blocker_wins() {
        // Dependency before routing: fixing the queue would not make it run.
        let none = Route::NoQueueForType {
            type_: "pdf".into(),
        };
        let c = WaitContext {
            unmet_dependency: Some("a"),
            ..ctx(&none)
        };
        assert_eq!(explain(&c, t(0)).unwrap().code(), "WaitingForDependency");
        // No pool before maxInFlight.
        let to_q = Route::To("q".into());
        let c = WaitContext {
            pool_serves_queue: false,
            running_in_queue: 9,
            max_in_flight: Some(1),
            ..ctx(&to_q)
        };
        assert_eq!(explain(&c, t(0)).unwrap().code(), "NoAgentPool");
    }

    #[test]
    fn running_and_finished_items_are_not_waiting() {
        let to_q = Route::To("q".into());
        for p in [
            Phase::Running,
            Phase::Succeeded,
            Phase::Failed,
            Phase::Cancelled,
            Phase::DeadLettered,
        ] {
            let c = WaitContext {
                phase: p,
                ..ctx(&to_q)
            };
            assert_eq!(explain(&c, t(0)), None, "{p}");
        }
    }
}
