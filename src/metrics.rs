//! Prometheus metrics. One registry per process; each role registers its own families
//! under the `triad_` prefix, in base units.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label values that come from work commands (counter and rule names): the first
/// `limit` distinct values are kept, later ones fold into [`LabelCap::OTHER`], so a
/// command inventing names cannot grow the registry (and every scrape) without bound.
#[derive(Clone)]
pub struct LabelCap {
    limit: usize,
    seen: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl LabelCap {
    pub const OTHER: &'static str = "other";

    pub fn new(limit: usize) -> Self {
        LabelCap {
            limit,
            seen: Arc::default(),
        }
    }

    /// The label value to use for `value`.
    pub fn label(&self, value: &str) -> String {
        let Ok(mut seen) = self.seen.lock() else {
            return Self::OTHER.to_owned();
        };
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.limit {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        Self::OTHER.to_owned()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

/// Metrics every controller process exports.
#[derive(Clone)]
pub struct ControllerMetrics {
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub reconcile_errors: Family<ControllerLabels, Counter>,
    pub leader: Family<RoleLabels, Gauge>,
}

impl ControllerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            });
        registry.register(
            "triad_reconcile_duration_seconds",
            "Time one reconcile took, by controller",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "triad_reconcile_errors",
            "Reconciles that failed, by controller",
            reconcile_errors.clone(),
        );
        let leader = Family::<RoleLabels, Gauge>::default();
        registry.register(
            "triad_leader",
            "1 while this process leads the role",
            leader.clone(),
        );
        Self {
            reconcile_duration,
            reconcile_errors,
            leader,
        }
    }

    /// Observes a reconcile's duration when the returned guard drops.
    /// Also gives the controller its error counter at 0, so `rate()` in the dashboard
    /// and TriadReconcileErrors sees its first errors (a series born at 1 has no step).
    pub fn time_reconcile(&self, controller: &str) -> ReconcileTimer {
        let labels = ControllerLabels {
            controller: controller.to_owned(),
        };
        let _ = self.reconcile_errors.get_or_create(&labels);
        ReconcileTimer {
            histogram: self.reconcile_duration.get_or_create(&labels).clone(),
            start: Instant::now(),
        }
    }
}

/// Drop guard that records the elapsed time into a histogram.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// A fresh registry with `triad_build_info` set.
pub fn new_registry() -> Registry {
    let mut registry = Registry::default();
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .set(1);
    registry.register("triad_build_info", "Triad build; always 1", build);
    registry
}

pub type SharedRegistry = Arc<Registry>;

/// The registry as a scrape sees it (tests).
#[cfg(test)]
pub fn scrape(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
    out
}

impl ControllerMetrics {
    /// Unregistered families, replaced by the process's shared ones at startup.
    pub fn placeholder() -> Self {
        Self {
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            reconcile_errors: Family::default(),
            leader: Family::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconciling_controller_exports_its_error_counter_at_zero() {
        let mut registry = Registry::default();
        let m = ControllerMetrics::register(&mut registry);
        drop(m.time_reconcile("workitem"));
        let out = scrape(&registry);
        assert!(
            out.contains("triad_reconcile_errors_total{controller=\"workitem\"} 0"),
            "{out}"
        );
    }

    #[test]
    fn label_values_from_work_fold_into_other_past_the_cap() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.label("tokens"), "tokens");
        assert_eq!(cap.label("cost"), "cost");
        assert_eq!(cap.label("made-up-1"), "other");
        assert_eq!(cap.label("made-up-2"), "other");
        assert_eq!(cap.label("tokens"), "tokens", "known names stay");
    }
}
