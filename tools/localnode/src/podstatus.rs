//! The pod's `status` as the runner reports it through `pods/status`: phase, the kubelet's
//! conditions, IPs and container statuses.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use crate::node::HOST_IP;
use crate::status::{Ctr, Phase};

/// Remembers when each condition last changed, so that `lastTransitionTime` moves only on
/// a change (and survives a restart of the runner, seeded from the pod's prior status).
#[derive(Default)]
pub struct Transitions(HashMap<String, (String, Timestamp)>);

impl Transitions {
    pub fn from_conditions<'a>(conditions: impl Iterator<Item = &'a PodCondition>) -> Self {
        Self(
            conditions
                .filter_map(|c| {
                    let t = c.last_transition_time.as_ref()?.0;
                    Some((c.type_.clone(), (c.status.clone(), t)))
                })
                .collect(),
        )
    }

    fn condition(
        &mut self,
        type_: &str,
        ok: bool,
        reason: Option<&str>,
        message: Option<String>,
    ) -> PodCondition {
        let status = if ok { "True" } else { "False" };
        let now = Timestamp::now();
        let entry = self
            .0
            .entry(type_.to_string())
            .or_insert_with(|| (status.to_string(), now));
        if entry.0 != status {
            *entry = (status.to_string(), now);
        }
        PodCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.map(str::to_string),
            message,
            last_transition_time: Some(Time(entry.1)),
            ..Default::default()
        }
    }
}

/// What the status is made of.
pub struct PodView<'a> {
    pub phase: Phase,
    pub init: &'a [Ctr],
    pub main: &'a [Ctr],
    /// Index of the first init container not yet complete.
    pub init_next: usize,
    pub sandbox_ready: bool,
    pub ip: Option<Ipv4Addr>,
    pub start_time: Timestamp,
}

/// The merge patch body `{"status": …}`.
pub fn pod_status(view: &PodView<'_>, transitions: &mut Transitions) -> serde_json::Value {
    let terminal = view.phase.is_terminal();
    let incomplete: Vec<&str> = view.init[view.init_next.min(view.init.len())..]
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let init_done = incomplete.is_empty();
    // Sidecars count towards readiness, as with the kubelet.
    let unready: Vec<&str> = view
        .main
        .iter()
        .chain(view.init.iter().filter(|c| c.sidecar))
        .filter(|c| !c.is_ready())
        .map(|c| c.name.as_str())
        .collect();
    let ready = unready.is_empty() && !terminal;
    let (ready_reason, ready_message) = if ready {
        (None, None)
    } else if terminal {
        (Some("PodCompleted"), None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let conditions = vec![
        transitions.condition(
            "PodReadyToStartContainers",
            view.sandbox_ready && !terminal,
            None,
            None,
        ),
        transitions.condition(
            "Initialized",
            init_done,
            (!init_done).then_some("ContainersNotInitialized"),
            (!init_done).then(|| {
                format!(
                    "containers with incomplete status: [{}]",
                    incomplete.join(" ")
                )
            }),
        ),
        transitions.condition("Ready", ready, ready_reason, ready_message.clone()),
        transitions.condition("ContainersReady", ready, ready_reason, ready_message),
        transitions.condition("PodScheduled", true, None, None),
    ];
    let mut status = json!({
        "phase": view.phase.as_str(),
        "conditions": conditions,
        "hostIP": HOST_IP,
        "hostIPs": [{ "ip": HOST_IP }],
        "startTime": Time(view.start_time),
        "containerStatuses": view.main.iter().map(|c| c.to_api(false)).collect::<Vec<_>>(),
    });
    if !view.init.is_empty() {
        status["initContainerStatuses"] =
            json!(view.init.iter().map(|c| c.to_api(true)).collect::<Vec<_>>());
    }
    if let Some(ip) = view.ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{ "ip": ip.to_string() }]);
    }
    json!({ "status": status })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Exit, State};

    fn running(name: &str, ready: bool) -> Ctr {
        let mut c = Ctr::new(name, "img", false);
        c.state = State::Running {
            pid: 7,
            started_at: Timestamp::now(),
        };
        (c.started, c.ready) = (true, ready);
        c
    }

    fn cond<'a>(v: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
        v["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .unwrap_or(&serde_json::Value::Null)
    }

    #[test]
    fn ready_running_pod() {
        let main = [running("a", true), running("b", true)];
        let mut done_init = Ctr::new("init", "img", false);
        done_init.state = State::Terminated(Exit::from_code(0, None, None, Timestamp::now()));
        let init = [done_init];
        let view = PodView {
            phase: Phase::Running,
            init: &init,
            main: &main,
            init_next: 1,
            sandbox_ready: true,
            ip: Some(Ipv4Addr::new(127, 1, 0, 9)),
            start_time: Timestamp::now(),
        };
        let v = pod_status(&view, &mut Transitions::default());
        assert_eq!(v["status"]["phase"], "Running");
        assert_eq!(v["status"]["podIP"], "127.1.0.9");
        assert_eq!(v["status"]["hostIP"], "127.0.0.1");
        assert_eq!(cond(&v, "Ready")["status"], "True");
        assert_eq!(cond(&v, "Initialized")["status"], "True");
        assert_eq!(v["status"]["initContainerStatuses"][0]["ready"], true);
        assert_eq!(v["status"]["containerStatuses"][1]["name"], "b");
    }

    #[test]
    fn unready_and_uninitialized_pod_says_why() {
        let main = [running("a", true), running("b", false)];
        let init = [Ctr::new("setup", "img", false)];
        let view = PodView {
            phase: Phase::Pending,
            init: &init,
            main: &main,
            init_next: 0,
            sandbox_ready: false,
            ip: None,
            start_time: Timestamp::now(),
        };
        let mut transitions = Transitions::default();
        let v = pod_status(&view, &mut transitions);
        assert_eq!(cond(&v, "Ready")["status"], "False");
        assert_eq!(
            cond(&v, "Ready")["message"],
            "containers with unready status: [b]"
        );
        assert_eq!(
            cond(&v, "Initialized")["message"],
            "containers with incomplete status: [setup]"
        );
        assert!(v["status"].get("podIP").is_none());
        // Same state again: identical body, so the runner writes nothing.
        assert_eq!(pod_status(&view, &mut transitions), v);
    }

    #[test]
    fn finished_pod_is_not_ready() {
        let mut c = Ctr::new("a", "img", false);
        c.state = State::Terminated(Exit::from_code(0, None, None, Timestamp::now()));
        let main = [c];
        let view = PodView {
            phase: Phase::Succeeded,
            init: &[],
            main: &main,
            init_next: 0,
            sandbox_ready: true,
            ip: None,
            start_time: Timestamp::now(),
        };
        let v = pod_status(&view, &mut Transitions::default());
        assert_eq!(cond(&v, "Ready")["reason"], "PodCompleted");
        assert_eq!(cond(&v, "PodReadyToStartContainers")["status"], "False");
        assert!(v["status"].get("initContainerStatuses").is_none());
    }
}
