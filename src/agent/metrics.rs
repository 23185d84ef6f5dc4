//! The agent's metric families, served on its own `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// How an item ended for this agent, as the `outcome` label says it. Besides the
/// outcome kinds: `Fenced` (our claim was taken away), `LeaseLost` (we could not renew
/// our lease in time, stopped the work and handed the item back with a fenced write)
/// and `Abandoned` (draining, the ending could not be written within the grace; the
/// supervisor reclaims the item once our lease goes stale).
pub mod outcome {
    pub const FENCED: &str = "Fenced";
    pub const LEASE_LOST: &str = "LeaseLost";
    pub const ABANDONED: &str = "Abandoned";
    /// Every outcome label: the outcome kinds and the three above.
    pub const ALL: [&str; 9] = [
        "Succeeded",
        "Failed",
        "FailedPermanently",
        "Cancelled",
        "LeaseExpired",
        "Released",
        FENCED,
        LEASE_LOST,
        ABANDONED,
    ];
}

#[derive(Clone)]
pub struct AgentMetrics {
    pub items: Family<OutcomeLabels, Counter>,
    pub claim_attempts: Counter,
    pub claim_conflicts: Counter,
    pub claim_prechecks: Counter,
    pub claim_prechecks_taken: Counter,
    pub claim_latency: Histogram,
    pub claim_shown: Histogram,
    pub lease_renew_failures: Counter,
    pub work_duration: Histogram,
    pub report_lines_rejected: Counter,
    pub busy: Gauge,
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            items: Family::default(),
            claim_attempts: Counter::default(),
            claim_conflicts: Counter::default(),
            claim_prechecks: Counter::default(),
            claim_prechecks_taken: Counter::default(),
            // 1 ms … ~65 s.
            claim_latency: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            claim_shown: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            lease_renew_failures: Counter::default(),
            // 10 ms … ~5.8 h.
            work_duration: Histogram::new(exponential_buckets(0.01, 2.0, 21)),
            report_lines_rejected: Counter::default(),
            busy: Gauge::default(),
        };
        registry.register(
            "triad_agent_items",
            "Items this agent finished, by outcome",
            m.items.clone(),
        );
        // Each outcome starts at 0: a Mortal agent finishes a few items and is gone, and
        // `rate()` sees an item only as a step between two scrapes of the same series.
        for o in outcome::ALL {
            let _ = m.items.get_or_create(&OutcomeLabels {
                outcome: o.to_owned(),
            });
        }
        registry.register(
            "triad_agent_claim_attempts",
            "Claims tried (compare-and-swap writes)",
            m.claim_attempts.clone(),
        );
        registry.register(
            "triad_agent_claim_conflicts",
            "Claims lost to another writer (409 Conflict)",
            m.claim_conflicts.clone(),
        );
        registry.register(
            "triad_agent_claim_prechecks",
            "Reads of a candidate before claiming it, made while most recent claims were lost",
            m.claim_prechecks.clone(),
        );
        registry.register(
            "triad_agent_claim_prechecks_taken",
            "Prechecks that found the candidate taken or changed, so that no claim was sent",
            m.claim_prechecks_taken.clone(),
        );
        registry.register(
            "triad_agent_claim_latency_seconds",
            "Time from an item first seen claimable by this agent to its claim",
            m.claim_latency.clone(),
        );
        registry.register(
            "triad_agent_claim_shown_seconds",
            "Time from sending a claim to this agent's own watch showing it: how far behind the API server the agents' caches run",
            m.claim_shown.clone(),
        );
        registry.register(
            "triad_agent_lease_renew_failures",
            "Lease renewals that failed",
            m.lease_renew_failures.clone(),
        );
        registry.register(
            "triad_agent_work_duration_seconds",
            "Wall time of work command runs",
            m.work_duration.clone(),
        );
        registry.register(
            "triad_agent_report_lines_rejected",
            "Report lines dropped as malformed or oversized",
            m.report_lines_rejected.clone(),
        );
        registry.register(
            "triad_agent_busy",
            "1 while the agent runs an item",
            m.busy.clone(),
        );
        m
    }

    pub fn item(&self, outcome: &str) {
        self.items
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_the_documented_names() {
        let mut registry = Registry::default();
        let m = AgentMetrics::register(&mut registry);
        m.item("Succeeded");
        m.claim_attempts.inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for name in [
            "triad_agent_items_total{outcome=\"Succeeded\"} 1",
            "triad_agent_items_total{outcome=\"Failed\"} 0",
            "triad_agent_claim_attempts_total 1",
            "triad_agent_claim_conflicts_total",
            "triad_agent_claim_prechecks_total",
            "triad_agent_claim_prechecks_taken_total",
            "triad_agent_claim_latency_seconds_bucket",
            "triad_agent_claim_shown_seconds_bucket",
            "triad_agent_lease_renew_failures_total",
            "triad_agent_work_duration_seconds_bucket",
            "triad_agent_report_lines_rejected_total",
            "triad_agent_busy",
        ] {
            assert!(out.contains(name), "{name} missing in:\n{out}");
        }
    }
}
