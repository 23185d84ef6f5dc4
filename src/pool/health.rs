//! What the pool controller keeps of each agent pod (a slim projection), and why a pod
//! is not ready: the reasons a person would otherwise dig out of `kubectl describe`.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::scaling::PodPhase;
use super::template::TEMPLATE_HASH_LABEL;
use crate::api::labels;

/// A pod that has not started for this long is reported even without a known reason.
pub const PENDING_TOO_LONG: SignedDuration = SignedDuration::from_secs(180);
/// A container that restarted this often and is not ready is crash looping, whether or
/// not the node reports the `CrashLoopBackOff` waiting reason.
pub const CRASH_RESTARTS: i32 = 3;

/// The fields of an agent pod the pool controller decides on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub uid: String,
    /// The `triad.dev/pool` label.
    pub pool: Option<String>,
    /// UID of the controlling owner (the AgentPool, for pods Triad made).
    pub owner_uid: Option<String>,
    pub created: Option<Timestamp>,
    pub deleting: bool,
    pub phase: Option<PodPhase>,
    pub ready: bool,
    pub template_hash: Option<String>,
    /// Message of `PodScheduled=False` with reason `Unschedulable`.
    pub unschedulable: Option<String>,
    /// The first container waiting for a reason other than a normal start: (reason, message).
    pub waiting: Option<(String, String)>,
    /// The highest restart count among containers that are not ready.
    pub unready_restarts: i32,
}

impl PodView {
    pub fn phase(&self) -> PodPhase {
        self.phase.unwrap_or(PodPhase::Pending)
    }
}

/// Waiting reasons that are part of a normal start.
const STARTING: [&str; 2] = ["ContainerCreating", "PodInitializing"];

/// Projects a Pod onto a [`PodView`].
pub fn project(pod: &Pod) -> Option<PodView> {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
    let containers: Vec<&ContainerStatus> = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .collect();
    let waiting = containers.iter().find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.clone()?;
        (!STARTING.contains(&reason.as_str()))
            .then(|| (reason, w.message.clone().unwrap_or_default()))
    });
    Some(PodView {
        name: meta.name.clone()?,
        uid: meta.uid.clone().unwrap_or_default(),
        pool: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::POOL))
            .cloned(),
        owner_uid: meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone()),
        created: meta.creation_timestamp.as_ref().map(|t| t.0),
        deleting: meta.deletion_timestamp.is_some(),
        phase: Some(PodPhase::parse(status.and_then(|s| s.phase.as_deref()))),
        ready: condition("Ready").is_some_and(|c| c.status == "True"),
        template_hash: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(TEMPLATE_HASH_LABEL))
            .cloned(),
        unschedulable: condition("PodScheduled")
            .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
            .map(|c| c.message.clone().unwrap_or_default()),
        waiting,
        unready_restarts: containers
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.restart_count)
            .max()
            .unwrap_or(0),
    })
}

/// Why a pod is not ready, in the words of the `PodsHealthy` condition's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Problem {
    CrashLoopBackOff,
    ImagePullBackOff,
    ErrImagePull,
    CreateContainerError,
    Unschedulable,
    PendingTooLong,
}

impl Problem {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CrashLoopBackOff => "CrashLoopBackOff",
            Self::ImagePullBackOff => "ImagePullBackOff",
            Self::ErrImagePull => "ErrImagePull",
            Self::CreateContainerError => "CreateContainerError",
            Self::Unschedulable => "Unschedulable",
            Self::PendingTooLong => "PendingTooLong",
        }
    }

    fn from_waiting(reason: &str) -> Option<Self> {
        Some(match reason {
            "CrashLoopBackOff" | "RunContainerError" => Self::CrashLoopBackOff,
            "ImagePullBackOff" => Self::ImagePullBackOff,
            "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => Self::ErrImagePull,
            "CreateContainerError" | "CreateContainerConfigError" => Self::CreateContainerError,
            _ => return None,
        })
    }
}

/// Why this pod is not ready, if it is one of the known reasons (or waited too long).
pub fn diagnose(pod: &PodView, now: Timestamp) -> Option<(Problem, String)> {
    if pod.deleting || pod.phase().is_terminal() || pod.ready {
        return None;
    }
    if let Some((reason, message)) = &pod.waiting
        && let Some(problem) = Problem::from_waiting(reason)
    {
        let detail = if message.is_empty() {
            reason.clone()
        } else {
            format!("{reason}: {message}")
        };
        return Some((problem, detail));
    }
    if pod.unready_restarts >= CRASH_RESTARTS {
        return Some((
            Problem::CrashLoopBackOff,
            format!("restarted {} times", pod.unready_restarts),
        ));
    }
    if let Some(message) = &pod.unschedulable {
        return Some((Problem::Unschedulable, message.clone()));
    }
    if pod.phase() == PodPhase::Pending
        && let Some(created) = pod.created
        && now.duration_since(created) >= PENDING_TOO_LONG
    {
        return Some((
            Problem::PendingTooLong,
            format!("pending for {}s", now.duration_since(created).as_secs()),
        ));
    }
    None
}

/// The `PodsHealthy` condition: `(healthy, reason, message)`. The reason is the most
/// common problem (ties go to the more severe one); the message counts every problem
/// and quotes one pod for each.
pub fn pods_healthy(
    problems: &[(String, Problem, String)],
    active: usize,
) -> (bool, String, String) {
    if problems.is_empty() {
        return (true, "AllPodsHealthy".into(), String::new());
    }
    let mut counts: Vec<(Problem, usize, &str, &str)> = Vec::new();
    for (pod, problem, detail) in problems {
        match counts.iter_mut().find(|(p, ..)| p == problem) {
            Some(entry) => entry.1 += 1,
            None => counts.push((*problem, 1, pod, detail)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let parts: Vec<String> = counts
        .iter()
        .map(|(p, n, pod, detail)| format!("{n} {} (pod {pod}: {detail})", p.as_str()))
        .collect();
    let mut message = format!(
        "{} of {active} agent pods not ready: {}",
        problems.len(),
        parts.join("; ")
    );
    truncate(&mut message, 1000);
    (false, counts[0].0.as_str().into(), message)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max.saturating_sub(1);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_893_456_000 + s).unwrap()
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn project_keeps_the_fields_that_matter() {
        let p = pod(json!({
            "metadata": {
                "name": "workers-abcde", "uid": "u1", "creationTimestamp": "2030-01-01T00:00:00Z",
                "labels": {"triad.dev/pool": "workers", "triad.dev/template-hash": "h1"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "X", "name": "x", "uid": "other"},
                    {"apiVersion": "triad.dev/v1alpha1", "kind": "AgentPool", "name": "workers", "uid": "pool-uid", "controller": true}
                ]
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}
                }]
            }
        }));
        let v = project(&p).unwrap();
        assert_eq!(v.name, "workers-abcde");
        assert_eq!(v.pool.as_deref(), Some("workers"));
        assert_eq!(v.owner_uid.as_deref(), Some("pool-uid"));
        assert_eq!(v.created, Some(t(0)));
        assert_eq!(v.phase(), PodPhase::Running);
        assert!(!v.ready && !v.deleting);
        assert_eq!(v.template_hash.as_deref(), Some("h1"));
        assert_eq!(
            v.waiting,
            Some(("CrashLoopBackOff".into(), "back-off 40s".into()))
        );
        assert_eq!(v.unready_restarts, 4);
    }

    #[test]
    fn project_reads_unschedulable_and_ignores_normal_waiting() {
        let p = pod(json!({
            "metadata": {"name": "p", "deletionTimestamp": "2030-01-01T00:00:00Z"},
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available"}],
                "containerStatuses": [{
                    "name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ContainerCreating"}}
                }]
            }
        }));
        let v = project(&p).unwrap();
        assert_eq!(v.unschedulable.as_deref(), Some("0/1 nodes are available"));
        assert_eq!(v.waiting, None);
        assert!(v.deleting);
        assert_eq!(v.owner_uid, None);
    }

    fn view() -> PodView {
        PodView {
            name: "p".into(),
            created: Some(t(0)),
            phase: Some(PodPhase::Pending),
            ..Default::default()
        }
    }

    #[test]
    fn diagnose_names_each_reason() {
        let cases: [(&str, Problem); 8] = [
            ("CrashLoopBackOff", Problem::CrashLoopBackOff),
            ("RunContainerError", Problem::CrashLoopBackOff),
            ("ImagePullBackOff", Problem::ImagePullBackOff),
            ("ErrImagePull", Problem::ErrImagePull),
            ("InvalidImageName", Problem::ErrImagePull),
            ("CreateContainerError", Problem::CreateContainerError),
            ("CreateContainerConfigError", Problem::CreateContainerError),
            ("ErrImageNeverPull", Problem::ErrImagePull),
        ];
        for (reason, want) in cases {
            let v = PodView {
                waiting: Some((reason.into(), "details".into())),
                ..view()
            };
            let (got, msg) = diagnose(&v, t(1)).unwrap();
            assert_eq!(got, want, "{reason}");
            assert_eq!(msg, format!("{reason}: details"));
        }
        let v = PodView {
            unready_restarts: 3,
            phase: Some(PodPhase::Running),
            ..view()
        };
        assert_eq!(diagnose(&v, t(1)).unwrap().0, Problem::CrashLoopBackOff);
        let v = PodView {
            unready_restarts: 2,
            phase: Some(PodPhase::Running),
            ..view()
        };
        assert_eq!(
            diagnose(&v, t(10_000)),
            None,
            "running, few restarts: starting"
        );
        let v = PodView {
            unschedulable: Some("0/0 nodes".into()),
            ..view()
        };
        assert_eq!(
            diagnose(&v, t(1)),
            Some((Problem::Unschedulable, "0/0 nodes".into()))
        );
        assert_eq!(diagnose(&view(), t(179)), None);
        assert_eq!(
            diagnose(&view(), t(180)).unwrap().0,
            Problem::PendingTooLong
        );
    }

    #[test]
    fn diagnose_ignores_ready_terminating_and_finished_pods() {
        let bad = PodView {
            waiting: Some(("CrashLoopBackOff".into(), String::new())),
            ..view()
        };
        assert_eq!(
            diagnose(
                &PodView {
                    ready: true,
                    ..bad.clone()
                },
                t(1)
            ),
            None
        );
        assert_eq!(
            diagnose(
                &PodView {
                    deleting: true,
                    ..bad.clone()
                },
                t(1)
            ),
            None
        );
        assert_eq!(
            diagnose(
                &PodView {
                    phase: Some(PodPhase::Failed),
                    ..bad.clone()
                },
                t(1)
            ),
            None
        );
        let unknown = PodView {
            waiting: Some(("SomethingNew".into(), String::new())),
            ..view()
        };
        assert_eq!(
            diagnose(&unknown, t(1)),
            None,
            "unknown reasons wait for PendingTooLong"
        );
    }

    #[test]
    fn pods_healthy_picks_the_most_common_reason_and_counts_all() {
        assert_eq!(
            pods_healthy(&[], 3),
            (true, "AllPodsHealthy".into(), String::new())
        );
        let problems = vec![
            (
                "a".to_string(),
                Problem::Unschedulable,
                "0/0 nodes".to_string(),
            ),
            (
                "b".to_string(),
                Problem::ImagePullBackOff,
                "pull x".to_string(),
            ),
            (
                "c".to_string(),
                Problem::Unschedulable,
                "0/0 nodes".to_string(),
            ),
        ];
        let (ok, reason, message) = pods_healthy(&problems, 4);
        assert!(!ok);
        assert_eq!(reason, "Unschedulable");
        assert_eq!(
            message,
            "3 of 4 agent pods not ready: 2 Unschedulable (pod a: 0/0 nodes); 1 ImagePullBackOff (pod b: pull x)"
        );
        // A tie goes to the more severe reason.
        let (_, reason, _) = pods_healthy(&problems[..2], 2);
        assert_eq!(reason, "ImagePullBackOff");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let mut s = "ééééé".to_string();
        truncate(&mut s, 4);
        assert!(s.len() <= 6 && s.ends_with('…'), "{s}");
        let mut short = "ok".to_string();
        truncate(&mut short, 4);
        assert_eq!(short, "ok");
    }
}
