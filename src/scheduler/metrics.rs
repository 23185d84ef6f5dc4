use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{Phase, WorkItem};
use crate::metrics::ControllerMetrics;

use super::index::PhaseCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueuePhase {
    pub namespace: String,
    pub queue: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub namespace: String,
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transition {
    pub decision: String,
}

#[derive(Clone)]
pub struct SchedulerMetrics {
    pub controller: ControllerMetrics,
    depth: Family<QueuePhase, Gauge>,
    oldest: Family<QueueLabels, Gauge>,
    decisions: Family<Transition, Counter>,
    admission_latency: Histogram,
}

impl SchedulerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let depth = Family::<QueuePhase, Gauge>::default();
        registry.register(
            "triad_queue_items",
            "WorkItems per queue and phase",
            depth.clone(),
        );
        let oldest = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "triad_queue_oldest_queued_seconds",
            "Age of the longest-waiting Queued item per queue",
            oldest.clone(),
        );
        let decisions = Family::<Transition, Counter>::default();
        registry.register(
            "triad_scheduler_decisions",
            "Scheduler decisions: admitted, retried, dead_lettered, cancelled, failed, escalated, redriven",
            decisions.clone(),
        );
        // Known decisions start at 0 so `increase()` sees the very first one.
        for decision in [
            "admitted",
            "retried",
            "dead_lettered",
            "failed",
            "cancelled",
            "escalated",
            "redriven",
        ] {
            let _ = decisions.get_or_create(&Transition {
                decision: decision.to_owned(),
            });
        }
        let admission_latency = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "triad_admission_latency_seconds",
            "From item creation to Queued, for items the scheduler admits",
            admission_latency.clone(),
        );
        Self {
            controller: crate::metrics::ControllerMetrics::placeholder(),
            depth,
            oldest,
            decisions,
            admission_latency,
        }
    }

    pub fn with_controller(mut self, controller: ControllerMetrics) -> Self {
        self.controller = controller;
        self
    }

    pub fn count(&self, decision: &str) {
        self.decisions
            .get_or_create(&Transition {
                decision: decision.to_owned(),
            })
            .inc();
    }

    pub fn observe_admission(&self, item: &WorkItem) {
        if let Some(created) = item.metadata.creation_timestamp.as_ref() {
            let waited = jiff::Timestamp::now()
                .duration_since(created.0)
                .as_secs_f64()
                .max(0.0);
            self.admission_latency.observe(waited);
        }
    }

    pub fn set_queue_depth(&self, namespace: &str, queue: &str, counts: &PhaseCounts, oldest: i64) {
        for phase in Phase::ALL {
            self.depth
                .get_or_create(&QueuePhase {
                    namespace: namespace.into(),
                    queue: queue.into(),
                    phase: phase.to_string(),
                })
                .set(counts.get(phase));
        }
        self.oldest
            .get_or_create(&QueueLabels {
                namespace: namespace.into(),
                queue: queue.into(),
            })
            .set(oldest);
    }
}
