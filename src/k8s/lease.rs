//! Leases: the agent heartbeat and per-role leader election share this module because
//! both are "hold a `coordination.k8s.io` Lease and renew it before it expires".

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{Patch, PostParams};
use serde_json::json;

use super::{is_conflict, is_not_found, patch_params};

fn micro_now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// An agent's heartbeat Lease, owned by its pod so it disappears with it.
pub struct AgentLease {
    api: Api<Lease>,
    pub name: String,
    holder: String,
    duration: Duration,
}

/// On an agent's Lease: the queues it serves, comma-separated.
pub const AGENT_QUEUES_ANNOTATION: &str = "triad.dev/queues";

/// Label every agent Lease carries.
pub const AGENT_LEASE_SELECTOR: &str = "app.kubernetes.io/component=triad-agent";

impl AgentLease {
    /// Creates (or takes over) the Lease `triad-agent-<agent>`, annotated with the
    /// queues the agent serves so that the agents sharing a queue know each other.
    pub async fn acquire(
        api: Api<Lease>,
        agent: &str,
        queues: &[&str],
        owner: Option<OwnerReference>,
        duration: Duration,
    ) -> crate::Result<Self> {
        let name = format!("triad-agent-{agent}");
        let queues = queues.join(",");
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                owner_references: owner.map(|o| vec![o]),
                annotations: Some([(AGENT_QUEUES_ANNOTATION.to_owned(), queues.clone())].into()),
                labels: Some(
                    [(
                        "app.kubernetes.io/component".to_owned(),
                        "triad-agent".to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(agent.to_owned()),
                lease_duration_seconds: Some(duration.as_secs().max(1) as i32),
                acquire_time: Some(micro_now()),
                renew_time: Some(micro_now()),
                ..Default::default()
            }),
        };
        match api.create(&PostParams::default(), &lease).await {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => {
                // Same pod name restarted in place: take the lease over.
                let body = json!({
                    "metadata": {"annotations": {AGENT_QUEUES_ANNOTATION: queues}},
                    "spec": {"holderIdentity": agent, "renewTime": micro_now(),
                        "leaseDurationSeconds": duration.as_secs().max(1)}});
                api.patch(
                    &name,
                    &patch_params(super::managers::AGENT),
                    &Patch::Merge(&body),
                )
                .await?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Self {
            api,
            name,
            holder: agent.to_owned(),
            duration,
        })
    }

    /// One renewal: one small write per agent, not per item.
    pub async fn renew(&self) -> crate::Result<()> {
        let body = json!({"spec": {"renewTime": micro_now(), "holderIdentity": self.holder}});
        self.api
            .patch(
                &self.name,
                &patch_params(super::managers::AGENT),
                &Patch::Merge(&body),
            )
            .await?;
        Ok(())
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Renew at a third of the duration so two renewals can fail before it lapses.
    pub fn renew_interval(&self) -> Duration {
        self.duration / 3
    }
}

/// Leader election for one role: a Lease `triad-<role>` whose holder is this pod.
///
/// Acquisition and renewal are updates with the observed resourceVersion, so two
/// candidates can never both believe they won.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

pub enum LeaderState {
    Leading,
    Following { holder: Option<String> },
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, role: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: format!("triad-{role}"),
            identity: identity.to_owned(),
            duration,
        }
    }

    pub fn lease_name(&self) -> &str {
        &self.name
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Tries to acquire or renew. Errors other than losing a race are returned so the
    /// caller can count them against its renew deadline.
    pub async fn try_acquire_or_renew(&self) -> crate::Result<LeaderState> {
        let now = jiff::Timestamp::now();
        let existing = match self.api.get(&self.name).await {
            Ok(l) => Some(l),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, true)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(LeaderState::Leading),
                Err(e) if is_conflict(&e) => Ok(LeaderState::Following { holder: None }),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone();
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => {
                now.duration_since(*renewed).as_secs_f64() > f64::from(secs)
            }
            _ => true,
        };
        if !ours && !expired && holder.is_some() {
            return Ok(LeaderState::Following { holder });
        }
        lease.spec = Some(self.spec(Some(&spec), !ours));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(LeaderState::Leading),
            Err(e) if is_conflict(&e) => Ok(LeaderState::Following { holder }),
            Err(e) => Err(e.into()),
        }
    }

    fn spec(&self, old: Option<&LeaseSpec>, acquiring: bool) -> LeaseSpec {
        let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: if acquiring {
                Some(micro_now())
            } else {
                old.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(micro_now()),
            lease_transitions: Some(if acquiring && old.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..Default::default()
        }
    }

    /// Gives the lease up on shutdown, only if we hold it (a CAS on its
    /// resourceVersion), so a standby takes over at once instead of after a lease
    /// duration.
    pub async fn release(&self) {
        let Ok(mut lease) = self.api.get(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(err) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(%err, lease = %self.name, "could not release the lease");
        }
    }
}

/// What a role checks before it writes: "am I the leader right now?". Watches and
/// caches run on standbys too, so a failover starts warm.
///
/// Leadership is held for a term that each successful renewal extends, measured on this
/// process's monotonic clock from before the renewal was sent. A leader that stops
/// running for a while (paused, starved, its node suspended) therefore finds its gate
/// closed when it resumes, before its election task has had a chance to learn that a
/// standby took over: it cannot write on the strength of a stale belief.
#[derive(Clone)]
pub struct LeaderGate {
    rx: tokio::sync::watch::Receiver<Term>,
}

/// What the election last said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    Following,
    /// Leading until this instant unless renewed.
    Until(tokio::time::Instant),
    Always,
}

impl Term {
    fn leading(self) -> bool {
        match self {
            Term::Following => false,
            Term::Until(end) => tokio::time::Instant::now() < end,
            Term::Always => true,
        }
    }
}

impl LeaderGate {
    /// A gate that is always open: for tests and single-replica runs without election.
    pub fn always() -> Self {
        // With the sender gone the receiver keeps reporting the last value: open.
        let (_, rx) = tokio::sync::watch::channel(Term::Always);
        Self { rx }
    }

    pub fn is_leading(&self) -> bool {
        self.rx.borrow().leading()
    }

    /// Resolves once this process leads.
    pub async fn wait_leading(&mut self) {
        while !self.rx.borrow_and_update().leading() {
            if self.rx.changed().await.is_err() {
                // The election ended without leading; the process is shutting down.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Runs the election for one role forever. Returns an error when leadership was lost
/// (the renew deadline passed): the caller exits the process, as controller-runtime
/// does, so a fresh start rejoins cleanly instead of acting on a stale belief.
pub async fn run_election(
    elector: LeaderElector,
    on_change: impl Fn(bool) + Send + 'static,
) -> (LeaderGate, tokio::task::JoinHandle<crate::Result<()>>) {
    let (tx, rx) = tokio::sync::watch::channel(Term::Following);
    let task = tokio::spawn(async move {
        let retry = elector.duration() / 4;
        let renew_deadline = elector.duration() * 2 / 3;
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            // The renewal stamps renewTime after this instant, so a term counted from it
            // ends before a standby can see the lease lapse.
            let sent = tokio::time::Instant::now();
            match elector.try_acquire_or_renew().await {
                Ok(LeaderState::Leading)
                    if last_renewed.is_some() && sent.elapsed() >= renew_deadline =>
                {
                    // The renewal came back after the term it was to extend had ended,
                    // so the gate closed meanwhile and the roles may have dropped work
                    // they were handed. Leadership that lapsed is treated as lost, as
                    // at the renew deadline: the process restarts with fresh caches.
                    on_change(false);
                    let _ = tx.send(Term::Following);
                    return Err(crate::Error::Invalid(format!(
                        "renewed {} only after the renew deadline {renew_deadline:?}",
                        elector.lease_name()
                    )));
                }
                Ok(LeaderState::Leading) => {
                    if last_renewed.is_none() {
                        tracing::info!(lease = elector.lease_name(), "became leader");
                        on_change(true);
                    }
                    last_renewed = Some(sent);
                    let _ = tx.send(Term::Until(sent + renew_deadline));
                }
                Ok(LeaderState::Following { holder }) => {
                    if last_renewed.is_some() {
                        on_change(false);
                        let _ = tx.send(Term::Following);
                        return Err(crate::Error::Invalid(format!(
                            "lost leadership of {} to {holder:?}",
                            elector.lease_name()
                        )));
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, lease = elector.lease_name(), "leader election request failed");
                    if let Some(at) = last_renewed
                        && at.elapsed() > renew_deadline
                    {
                        on_change(false);
                        let _ = tx.send(Term::Following);
                        return Err(crate::Error::Invalid(format!(
                            "could not renew {} within {renew_deadline:?}",
                            elector.lease_name()
                        )));
                    }
                }
            }
            tokio::time::sleep(retry).await;
        }
    });
    (LeaderGate { rx }, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(term: Term) -> (tokio::sync::watch::Sender<Term>, LeaderGate) {
        let (tx, rx) = tokio::sync::watch::channel(term);
        (tx, LeaderGate { rx })
    }

    /// A leader whose renewals stop (it was paused past its term) is no longer leading,
    /// although nothing told it so: the gate closes by itself.
    #[tokio::test(start_paused = true)]
    async fn a_term_that_is_not_renewed_closes_the_gate_by_itself() {
        let term = Duration::from_secs(2);
        let (tx, gate) = gate(Term::Until(tokio::time::Instant::now() + term));
        assert!(gate.is_leading());
        tokio::time::advance(term / 2).await;
        assert!(gate.is_leading());
        tokio::time::advance(term / 2).await;
        assert!(!gate.is_leading(), "leading past the end of its term");
        // A renewal opens it again.
        tx.send(Term::Until(tokio::time::Instant::now() + term))
            .expect("send");
        assert!(gate.is_leading());
        tx.send(Term::Following).expect("send");
        assert!(!gate.is_leading());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_leading_waits_for_a_live_term() {
        let now = tokio::time::Instant::now();
        let (tx, mut gate) = gate(Term::Until(now));
        let mut waiting = tokio::spawn(async move { gate.wait_leading().await });
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            futures::poll!(&mut waiting).is_pending(),
            "an ended term is not leadership"
        );
        tx.send(Term::Until(
            tokio::time::Instant::now() + Duration::from_secs(5),
        ))
        .expect("send");
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("leading")
            .expect("task");
    }

    #[test]
    fn always_stays_open() {
        assert!(Term::Always.leading());
        assert!(!Term::Following.leading());
    }
}
