//! Which queue an item runs on.
//!
//! A queue the item names (or the scheduler routed it to, `status.queue`) wins; a
//! typed item goes to the one queue whose `types` lists its type. Two such queues are
//! a configuration error the user must see, not a silent pick: a pick could change
//! whenever queues are listed in another order.

use crate::api::{WorkItem, WorkQueueSpec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    To(String),
    /// No queue lists the type (also: an item with neither queue nor type).
    NoQueueForType {
        type_: String,
    },
    /// The named queue does not exist.
    QueueMissing {
        queue: String,
    },
    /// Several queues list the type; `queues` sorted by name.
    AmbiguousType {
        type_: String,
        queues: Vec<String>,
    },
}

impl Route {
    /// The condition reason for a route that failed (`QueueNotFound`, `AmbiguousType`).
    pub fn condition_reason(&self) -> Option<&'static str> {
        match self {
            Route::To(_) => None,
            Route::NoQueueForType { .. } | Route::QueueMissing { .. } => Some("QueueNotFound"),
            Route::AmbiguousType { .. } => Some("AmbiguousType"),
        }
    }

    pub fn queue(&self) -> Option<&str> {
        match self {
            Route::To(q) => Some(q),
            _ => None,
        }
    }
}

/// Resolves the item's queue among `queues` (name, spec) of its namespace.
pub fn route<'a>(
    item: &WorkItem,
    queues: impl IntoIterator<Item = (&'a str, &'a WorkQueueSpec)>,
) -> Route {
    let queues: Vec<_> = queues.into_iter().collect();
    if let Some(named) = item.effective_queue() {
        return if queues.iter().any(|(n, _)| *n == named) {
            Route::To(named.into())
        } else {
            Route::QueueMissing {
                queue: named.into(),
            }
        };
    }
    let type_ = item.spec.type_.clone().unwrap_or_default();
    let mut matching: Vec<String> = queues
        .iter()
        .filter(|(_, spec)| spec.types.contains(&type_))
        .map(|(n, _)| (*n).to_string())
        .collect();
    matching.sort();
    matching.dedup();
    match matching.len() {
        0 => Route::NoQueueForType { type_ },
        1 => Route::To(matching.remove(0)),
        _ => Route::AmbiguousType {
            type_,
            queues: matching,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{WorkItemSpec, WorkItemStatus};

    fn q(types: &[&str]) -> WorkQueueSpec {
        WorkQueueSpec {
            types: types.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn item(queue: Option<&str>, type_: Option<&str>) -> WorkItem {
        WorkItem::new(
            "x",
            WorkItemSpec {
                queue: queue.map(Into::into),
                type_: type_.map(Into::into),
                priority: 500,
                ..Default::default()
            },
        )
    }

    #[test]
    fn named_queue_wins_over_type() {
        let (a, b) = (q(&["pdf"]), q(&[]));
        let r = route(&item(Some("b"), Some("pdf")), [("a", &a), ("b", &b)]);
        assert_eq!(r, Route::To("b".into()));
        assert_eq!(r.queue(), Some("b"));
        assert_eq!(r.condition_reason(), None);
    }

    #[test]
    fn named_queue_must_exist() {
        let a = q(&["pdf"]);
        let r = route(&item(Some("gone"), Some("pdf")), [("a", &a)]);
        assert_eq!(
            r,
            Route::QueueMissing {
                queue: "gone".into()
            }
        );
        assert_eq!(r.condition_reason(), Some("QueueNotFound"));
        assert_eq!(r.queue(), None);
    }

    #[test]
    fn routed_queue_in_status_wins() {
        let (a, b) = (q(&["pdf"]), q(&[]));
        let mut wi = item(None, Some("pdf"));
        wi.status = Some(WorkItemStatus {
            queue: Some("b".into()),
            ..Default::default()
        });
        assert_eq!(route(&wi, [("a", &a), ("b", &b)]), Route::To("b".into()));
    }

    #[test]
    fn type_routes_to_the_single_accepting_queue() {
        let (a, b) = (q(&["pdf", "img"]), q(&["txt"]));
        assert_eq!(
            route(&item(None, Some("txt")), [("a", &a), ("b", &b)]),
            Route::To("b".into())
        );
    }

    #[test]
    fn no_accepting_queue() {
        let a = q(&["pdf"]);
        let r = route(&item(None, Some("txt")), [("a", &a)]);
        assert_eq!(
            r,
            Route::NoQueueForType {
                type_: "txt".into()
            }
        );
        assert_eq!(r.condition_reason(), Some("QueueNotFound"));
        assert_eq!(
            route(&item(None, Some("txt")), std::iter::empty()),
            Route::NoQueueForType {
                type_: "txt".into()
            }
        );
    }

    #[test]
    fn two_accepting_queues_are_reported_sorted() {
        let (a, b, c) = (q(&["pdf"]), q(&["pdf"]), q(&["x"]));
        let r = route(
            &item(None, Some("pdf")),
            [("zeta", &a), ("alpha", &b), ("c", &c)],
        );
        assert_eq!(
            r,
            Route::AmbiguousType {
                type_: "pdf".into(),
                queues: vec!["alpha".into(), "zeta".into()]
            }
        );
        assert_eq!(r.condition_reason(), Some("AmbiguousType"));
    }
}
