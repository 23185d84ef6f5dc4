//! The agent's heartbeat: one Lease, renewed in the background; the run loop asks
//! whether it is still fresh before it writes anything for an item.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;

use super::metrics::AgentMetrics;
use crate::k8s::lease::AgentLease;

/// Shared view of the lease's renewals.
///
/// Freshness alone is not enough: after the agent was paused (SIGSTOP, a long GC-like
/// stall of the host) the heartbeat may renew the lease again before the run loop looks,
/// and the lease would look fresh although it lapsed in between and the supervisor may
/// have reclaimed our item. So every lapse is counted, and an item claimed before a
/// lapse is given up.
#[derive(Clone)]
pub struct LeaseHealth {
    last_renewed: Arc<Mutex<Instant>>,
    lapses: Arc<AtomicU64>,
    duration: Duration,
}

impl LeaseHealth {
    pub fn new(duration: Duration) -> Self {
        LeaseHealth {
            last_renewed: Arc::new(Mutex::new(Instant::now())),
            lapses: Arc::default(),
            duration,
        }
    }

    /// The margin we keep below the lease duration: past `duration - margin` without a
    /// renewal we must assume the supervisor may fence us out, and stop writing.
    pub fn margin(duration: Duration) -> Duration {
        (duration / 5).max(Duration::from_secs(1)).min(duration / 2)
    }

    fn limit(&self) -> Duration {
        self.duration.saturating_sub(Self::margin(self.duration))
    }

    pub fn fresh(&self) -> bool {
        let since = self
            .last_renewed
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX);
        since < self.limit()
    }

    /// How many times renewals stopped for longer than the limit.
    pub fn lapses(&self) -> u64 {
        self.lapses.load(Ordering::SeqCst)
    }

    /// Still fresh and no lapse since `lapses_then` was read.
    pub fn held_since(&self, lapses_then: u64) -> bool {
        self.fresh() && self.lapses() == lapses_then
    }

    fn renewed(&self) {
        if let Ok(mut t) = self.last_renewed.lock() {
            if t.elapsed() >= self.limit() {
                self.lapses.fetch_add(1, Ordering::SeqCst);
            }
            *t = Instant::now();
        }
    }
}

/// Who owns the Lease and how long it lasts.
#[derive(Clone)]
pub struct LeaseSpec {
    pub agent: String,
    /// The queues it serves, announced on the Lease for the agent's peers.
    pub queues: Vec<String>,
    pub owner: Option<OwnerReference>,
    pub duration: Duration,
}

impl LeaseSpec {
    /// Creates (or takes over) the agent's Lease.
    async fn acquire(&self, api: &Api<Lease>) -> crate::Result<AgentLease> {
        let queues: Vec<&str> = self.queues.iter().map(String::as_str).collect();
        AgentLease::acquire(
            api.clone(),
            &self.agent,
            &queues,
            self.owner.clone(),
            self.duration,
        )
        .await
    }
}

/// Acquires the Lease (retrying transient errors a few times) and starts renewing it.
pub async fn start(
    api: Api<Lease>,
    spec: LeaseSpec,
    metrics: AgentMetrics,
) -> crate::Result<(String, LeaseHealth, tokio::task::JoinHandle<()>)> {
    let mut tries = 0;
    let lease = loop {
        match spec.acquire(&api).await {
            Ok(l) => break l,
            Err(e) if tries < 10 => {
                tries += 1;
                tracing::warn!(error = %e, "cannot acquire the agent lease yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let name = lease.name.clone();
    let health = LeaseHealth::new(spec.duration);
    let task = tokio::spawn(renew_forever(api, spec, lease, health.clone(), metrics));
    Ok((name, health, task))
}

async fn renew_forever(
    api: Api<Lease>,
    spec: LeaseSpec,
    mut lease: AgentLease,
    health: LeaseHealth,
    metrics: AgentMetrics,
) {
    let interval = lease.renew_interval().max(Duration::from_millis(200));
    // After a failure retry sooner, so one lost request does not cost a third of the lease.
    let retry = interval.min(Duration::from_secs(1));
    let mut wait = interval;
    loop {
        tokio::time::sleep(wait).await;
        match tokio::time::timeout(interval, lease.renew()).await {
            Ok(Ok(())) => {
                health.renewed();
                wait = interval;
            }
            Ok(Err(e)) => {
                metrics.lease_renew_failures.inc();
                wait = retry;
                let gone = matches!(&e, crate::Error::Kube(k) if crate::k8s::is_not_found(k));
                tracing::warn!(error = %e, lease = %lease.name, "lease renewal failed");
                if gone {
                    // Someone deleted it: create it again (re-acquire).
                    if let Ok(l) = spec.acquire(&api).await {
                        lease = l;
                        health.renewed();
                        wait = interval;
                    }
                }
            }
            Err(_) => {
                metrics.lease_renew_failures.inc();
                wait = retry;
                tracing::warn!(lease = %lease.name, "lease renewal timed out");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_a_fifth_at_least_a_second_and_at_most_half() {
        assert_eq!(
            LeaseHealth::margin(Duration::from_secs(15)),
            Duration::from_secs(3)
        );
        assert_eq!(
            LeaseHealth::margin(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(
            LeaseHealth::margin(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn freshness_follows_the_last_renewal_and_lapses_are_remembered() {
        let h = LeaseHealth::new(Duration::from_secs(15));
        assert!(h.fresh());
        let before = h.lapses();
        assert!(h.held_since(before));
        // 13 s without a renewal: past duration − margin (12 s).
        *h.last_renewed.lock().unwrap() = Instant::now() - Duration::from_secs(13);
        assert!(!h.fresh());
        h.renewed();
        assert!(h.fresh(), "renewed again");
        assert!(!h.held_since(before), "but it lapsed in between");
        assert!(h.held_since(h.lapses()));
        h.renewed();
        assert_eq!(h.lapses(), before + 1, "a timely renewal is no lapse");
    }
}
