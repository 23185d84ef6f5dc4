//! The pool controller's own metric families.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::status::Counts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub namespace: String,
    pub pool: String,
    /// ready | busy | idle | desired
    pub state: String,
}

const STATES: [&str; 4] = ["ready", "busy", "idle", "desired"];

#[derive(Clone)]
pub struct PoolMetrics {
    pub agents: Family<AgentLabels, Gauge>,
}

impl PoolMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let agents = Family::<AgentLabels, Gauge>::default();
        registry.register(
            "triad_pool_agents",
            "Agents of a pool by state: ready, busy (holding a Running item), idle (ready, not busy), desired",
            agents.clone(),
        );
        Self { agents }
    }

    pub fn set(&self, namespace: &str, pool: &str, desired: i32, c: Counts) {
        for (state, value) in STATES.iter().zip([c.ready, c.busy, c.idle, desired]) {
            self.agents
                .get_or_create(&labels(namespace, pool, state))
                .set(i64::from(value));
        }
    }

    /// Drops a deleted pool's series.
    pub fn forget(&self, namespace: &str, pool: &str) {
        for state in STATES {
            self.agents.remove(&labels(namespace, pool, state));
        }
    }
}

fn labels(namespace: &str, pool: &str, state: &str) -> AgentLabels {
    AgentLabels {
        namespace: namespace.to_owned(),
        pool: pool.to_owned(),
        state: state.to_owned(),
    }
}
