//! The supervisor's metrics: agents by health, stalled items, budget used per queue and
//! counter, violations by rule, interventions by monitor and action, and the time from
//! a fault (last lease renewal seen, start of a stall, a reported violation, a timeout)
//! to its intervention.
//!
//! Gauges and counters that describe the cluster (agents, stalled items, budget used,
//! violations) are written by the leader only, so that summing over supervisor replicas
//! does not double them.

use std::sync::atomic::AtomicU64;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MonitorLabels {
    pub monitor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub namespace: String,
    pub pool: String,
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub namespace: String,
    pub queue: String,
    pub counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone)]
pub struct SupervisorMetrics {
    interventions: Family<InterventionLabels, Counter>,
    fault_to_intervention: Family<MonitorLabels, Histogram>,
    running: Gauge,
    agents: Family<AgentLabels, Gauge>,
    stalled: Family<NamespaceLabels, Gauge>,
    budget_used: Family<BudgetLabels, Counter<f64, AtomicU64>>,
    violations: Family<RuleLabels, Counter>,
    /// Counter and rule names are the work's: capped.
    counter_names: crate::metrics::LabelCap,
    rule_names: crate::metrics::LabelCap,
}

/// Distinct counter names (`tokens`, `cost`, …) kept as labels; more fold into `other`.
pub const MAX_COUNTER_LABELS: usize = 32;
/// Distinct violation rule names kept as labels; more fold into `other`.
pub const MAX_RULE_LABELS: usize = 64;

impl SupervisorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let interventions = Family::<InterventionLabels, Counter>::default();
        registry.register(
            "triad_interventions",
            "Supervisor interventions by monitor and action",
            interventions.clone(),
        );
        for (monitor, actions) in crate::core::supervision::INTERVENTION_KINDS {
            for action in *actions {
                let _ = interventions.get_or_create(&InterventionLabels {
                    monitor: monitor.as_str().into(),
                    action: (*action).into(),
                });
            }
        }
        let fault_to_intervention =
            Family::<MonitorLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.1, 2.0, 14))
            });
        registry.register(
            "triad_fault_to_intervention_seconds",
            "From a fault the supervisor can date (last lease renewal seen, agent restart, start of a stall, usage report, reported violation, timeout) to its intervention, by monitor",
            fault_to_intervention.clone(),
        );
        // Every monitor's series exists from the start, so dashboards and alerts see
        // the histogram before the first fault.
        for monitor in ["health", "progress", "budget", "violation"] {
            let _ = fault_to_intervention.get_or_create(&MonitorLabels {
                monitor: monitor.into(),
            });
        }
        let running = Gauge::default();
        registry.register(
            "triad_supervised_items",
            "Running WorkItems the supervisor watches",
            running.clone(),
        );
        let agents = Family::<AgentLabels, Gauge>::default();
        registry.register(
            "triad_agents",
            "Agent pods by health as the supervisor sees them (healthy, starting, stale, crashlooping, oomkilled, imagepullfailing, unschedulable, pendingtoolong, exited, terminating)",
            agents.clone(),
        );
        let stalled = Family::<NamespaceLabels, Gauge>::default();
        registry.register(
            "triad_stalled_items",
            "Running WorkItems with no progress for their queue's stallSeconds",
            stalled.clone(),
        );
        let budget_used = Family::<BudgetLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "triad_budget_used",
            "Usage reported by running items, per queue and counter (sum of usage increases; rate() gives e.g. cost per hour)",
            budget_used.clone(),
        );
        let violations = Family::<RuleLabels, Counter>::default();
        registry.register(
            "triad_violations",
            "Violations by rule: reported by work commands, and AttemptTimeout, PastDeadline",
            violations.clone(),
        );
        Self {
            interventions,
            fault_to_intervention,
            running,
            agents,
            stalled,
            budget_used,
            violations,
            counter_names: crate::metrics::LabelCap::new(MAX_COUNTER_LABELS),
            rule_names: crate::metrics::LabelCap::new(MAX_RULE_LABELS),
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

    pub fn fault_to_intervention(&self, monitor: &str, seconds: f64) {
        self.fault_to_intervention
            .get_or_create(&MonitorLabels {
                monitor: monitor.into(),
            })
            .observe(seconds.max(0.0));
    }

    pub fn set_running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Replaces the agents gauge: (namespace, pool, health) → pods.
    pub fn set_agents(&self, counts: &std::collections::BTreeMap<(String, String, String), i64>) {
        self.agents.clear();
        for ((namespace, pool, health), n) in counts {
            self.agents
                .get_or_create(&AgentLabels {
                    namespace: namespace.clone(),
                    pool: pool.clone(),
                    health: health.clone(),
                })
                .set(*n);
        }
    }

    /// Replaces the stalled-items gauge: namespace → items.
    pub fn set_stalled(&self, counts: &std::collections::BTreeMap<String, i64>) {
        self.stalled.clear();
        for (namespace, n) in counts {
            self.stalled
                .get_or_create(&NamespaceLabels {
                    namespace: namespace.clone(),
                })
                .set(*n);
        }
    }

    pub fn budget_used(&self, namespace: &str, queue: &str, counter: &str, amount: f64) {
        if amount.is_finite() && amount > 0.0 {
            self.budget_used
                .get_or_create(&BudgetLabels {
                    namespace: namespace.into(),
                    queue: queue.into(),
                    counter: self.counter_names.label(counter),
                })
                .inc_by(amount);
        }
    }

    pub fn violations(&self, rule: &str, n: u64) {
        if n > 0 {
            self.violations
                .get_or_create(&RuleLabels {
                    rule: self.rule_names.label(rule),
                })
                .inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interventions_start_at_zero_so_increase_sees_the_first() {
        let mut registry = Registry::default();
        let m = SupervisorMetrics::register(&mut registry);
        let out = crate::metrics::scrape(&registry);
        for line in [
            "triad_interventions_total{monitor=\"progress\",action=\"CancelRequested\"} 0",
            "triad_interventions_total{monitor=\"budget\",action=\"Escalate\"} 0",
            "triad_interventions_total{monitor=\"health\",action=\"FenceOut\"} 0",
        ] {
            assert!(out.contains(line), "{line} missing in:\n{out}");
        }
        m.intervention("progress", "CancelRequested");
        let out = crate::metrics::scrape(&registry);
        assert!(
            out.contains(
                "triad_interventions_total{monitor=\"progress\",action=\"CancelRequested\"} 1"
            ),
            "{out}"
        );
    }
}
