//! The supervisor's metrics: interventions by monitor and action, and the time from a
//! fault (last lease renewal seen, start of a stall) to the intervention.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterventionLabels {
    pub monitor: String,
    pub action: String,
}

#[derive(Clone)]
pub struct SupervisorMetrics {
    interventions: Family<InterventionLabels, Counter>,
    fault_to_intervention: Histogram,
    running: Gauge,
}

impl SupervisorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let interventions = Family::<InterventionLabels, Counter>::default();
        registry.register(
            "triad_interventions",
            "Supervisor interventions by monitor and action",
            interventions.clone(),
        );
        let fault_to_intervention = Histogram::new(exponential_buckets(0.1, 2.0, 14));
        registry.register(
            "triad_fault_to_intervention_seconds",
            "From a fault the supervisor can date (last lease renewal seen, start of a stall) to its intervention",
            fault_to_intervention.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "triad_supervised_items",
            "Running WorkItems the supervisor watches",
            running.clone(),
        );
        Self {
            interventions,
            fault_to_intervention,
            running,
        }
    }

    pub fn intervention(&self, monitor: &str, action: &str) {
        self.interventions
            .get_or_create(&InterventionLabels {
                monitor: monitor.into(),
                action: action.into(),
            })
            .inc();
    }

    pub fn fault_to_intervention(&self, seconds: f64) {
        self.fault_to_intervention.observe(seconds.max(0.0));
    }

    pub fn set_running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
