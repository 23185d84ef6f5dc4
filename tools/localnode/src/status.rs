//! Container bookkeeping and the pure rules that turn it into Kubernetes status: restart
//! decisions, crash-loop backoff, and the pod phase (following the kubelet's `getPhase`).

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A container that ran this long before exiting starts its backoff over, as the kubelet
/// forgets a crash loop after twice the maximum backoff.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

impl Exit {
    pub fn from_code(
        code: i32,
        signal: Option<i32>,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    ) -> Self {
        Self {
            code,
            signal,
            reason: if code == 0 { "Completed" } else { "Error" }.to_string(),
            message: None,
            started_at,
            finished_at,
            container_id: None,
        }
    }

    fn to_api(&self) -> ContainerStateTerminated {
        ContainerStateTerminated {
            exit_code: self.code,
            signal: self.signal,
            reason: Some(self.reason.clone()),
            message: self.message.clone(),
            started_at: self.started_at.map(Time),
            finished_at: Some(Time(self.finished_at)),
            container_id: self.container_id.clone(),
        }
    }

    pub fn from_api(t: &ContainerStateTerminated) -> Self {
        Self {
            code: t.exit_code,
            signal: t.signal,
            reason: t.reason.clone().unwrap_or_default(),
            message: t.message.clone(),
            started_at: t.started_at.as_ref().map(|t| t.0),
            finished_at: t.finished_at.as_ref().map_or_else(Timestamp::now, |t| t.0),
            container_id: t.container_id.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        pid: i32,
        started_at: Timestamp,
    },
    Terminated(Exit),
}

impl State {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        Self::Waiting {
            reason: reason.to_string(),
            message,
        }
    }

    fn to_api(&self) -> ContainerState {
        match self {
            State::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            State::Running { started_at, .. } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..Default::default()
            },
            State::Terminated(exit) => ContainerState {
                terminated: Some(exit.to_api()),
                ..Default::default()
            },
        }
    }
}

/// One container (or init container) of a pod as the runner tracks it.
#[derive(Clone, Debug)]
pub struct Ctr {
    pub name: String,
    pub image: String,
    /// An init container with `restartPolicy: Always` (a sidecar): it keeps running beside
    /// the main containers and counts as initialized once started.
    pub sidecar: bool,
    pub state: State,
    pub last: Option<Exit>,
    pub restart_count: i32,
    pub ever_started: bool,
    /// When to (re)start it; `None` means nothing is scheduled.
    pub next_start: Option<Instant>,
    pub backoff: Duration,
    /// Increments per start, so the exit of an earlier run is never taken for the current.
    pub run_id: u64,
    /// Probe results of the current run (true without the corresponding probe).
    pub started: bool,
    pub ready: bool,
    pub probe_task: Option<tokio::task::AbortHandle>,
    /// SIGKILL deadline of a container being restarted for a failed liveness probe.
    pub kill_at: Option<Instant>,
}

impl Ctr {
    pub fn new(name: &str, image: &str, sidecar: bool) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            sidecar,
            state: State::waiting("ContainerCreating", None),
            last: None,
            restart_count: 0,
            ever_started: false,
            next_start: None,
            backoff: BACKOFF_INITIAL,
            run_id: 0,
            started: false,
            ready: false,
            probe_task: None,
            kill_at: None,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    /// Running, started and passing its readiness probe.
    pub fn is_ready(&self) -> bool {
        self.is_running() && self.started && self.ready
    }

    /// The current run ended: its probes and pending kill go with it.
    pub fn end_run(&mut self) {
        if let Some(task) = self.probe_task.take() {
            task.abort();
        }
        self.kill_at = None;
        self.started = false;
        self.ready = false;
    }

    pub fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(e) if e.code == 0)
    }

    /// Returns the delay to wait before the next start and doubles the backoff.
    pub fn take_backoff(&mut self) -> Duration {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        delay
    }

    pub fn to_api(&self, init: bool) -> ContainerStatus {
        let ready = if init && !self.sidecar {
            self.succeeded()
        } else {
            self.is_ready()
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: String::new(),
            container_id: self.pid().map(|p| format!("localnode://{p}")),
            ready,
            started: Some(self.is_running() && self.started),
            restart_count: self.restart_count,
            state: Some(self.state.to_api()),
            last_state: Some(
                self.last
                    .as_ref()
                    .map(|e| ContainerState {
                        terminated: Some(e.to_api()),
                        ..Default::default()
                    })
                    .unwrap_or_default(),
            ),
            ..Default::default()
        }
    }
}

/// Whether a container that exited with `code` is started again under the pod's policy.
/// Init containers pass `"OnFailure"` for an `Always` pod: they rerun only until they succeed.
pub fn should_restart(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// The pod phase from its containers, after the kubelet's rules: a failed init container
/// under `Never` fails the pod; unfinished init or a main container that never ran keeps it
/// Pending; anything running or about to restart makes it Running; once every container is
/// done for good it is Succeeded if all exited 0, else Failed.
pub fn phase(init_failed: bool, init_done: bool, mains: &[Ctr]) -> Phase {
    if init_failed {
        return Phase::Failed;
    }
    if !init_done {
        return Phase::Pending;
    }
    let mut fresh = false;
    let mut active = false;
    let mut all_zero = true;
    for c in mains {
        match &c.state {
            State::Running { .. } => active = true,
            State::Terminated(e) => all_zero &= e.code == 0,
            State::Waiting { .. } => match (&c.last, c.next_start) {
                (None, _) => fresh = true,
                (Some(_), Some(_)) => active = true,
                (Some(last), None) => all_zero &= last.code == 0,
            },
        }
    }
    if fresh {
        Phase::Pending
    } else if active {
        Phase::Running
    } else if all_zero {
        Phase::Succeeded
    } else {
        Phase::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(state: State) -> Ctr {
        Ctr {
            state,
            ..Ctr::new("c", "img", false)
        }
    }

    fn exited(code: i32) -> State {
        State::Terminated(Exit::from_code(code, None, None, Timestamp::now()))
    }

    fn ready(mut c: Ctr) -> Ctr {
        (c.started, c.ready) = (true, true);
        c
    }

    fn running() -> State {
        State::Running {
            pid: 42,
            started_at: Timestamp::now(),
        }
    }

    #[test]
    fn restart_policy() {
        assert!(should_restart("Always", 0));
        assert!(should_restart("Always", 1));
        assert!(!should_restart("OnFailure", 0));
        assert!(should_restart("OnFailure", 3));
        assert!(!should_restart("Never", 3));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut c = ctr(running());
        let delays: Vec<u64> = (0..8).map(|_| c.take_backoff().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn phases() {
        assert_eq!(phase(true, true, &[ctr(running())]), Phase::Failed);
        assert_eq!(phase(false, false, &[ctr(running())]), Phase::Pending);
        assert_eq!(
            phase(
                false,
                true,
                &[ctr(State::waiting("ContainerCreating", None))]
            ),
            Phase::Pending
        );
        assert_eq!(
            phase(false, true, &[ctr(running()), ctr(exited(0))]),
            Phase::Running
        );
        assert_eq!(
            phase(false, true, &[ctr(exited(0)), ctr(exited(0))]),
            Phase::Succeeded
        );
        assert_eq!(
            phase(false, true, &[ctr(exited(0)), ctr(exited(3))]),
            Phase::Failed
        );
        // Crash-looping: waiting with a last termination and a restart scheduled.
        let mut looping = ctr(State::waiting("CrashLoopBackOff", None));
        looping.last = Some(Exit::from_code(1, None, None, Timestamp::now()));
        looping.next_start = Some(Instant::now());
        assert_eq!(phase(false, true, &[looping.clone()]), Phase::Running);
        // The same container once restarts are off (pod deleted) counts by its last exit.
        looping.next_start = None;
        assert_eq!(phase(false, true, &[looping]), Phase::Failed);
        assert_eq!(phase(false, true, &[]), Phase::Succeeded);
    }

    #[test]
    fn status_shape() {
        let mut c = ctr(exited(3));
        c.last = Some(Exit::from_code(1, Some(9), None, Timestamp::now()));
        c.restart_count = 2;
        let s = c.to_api(false);
        assert_eq!(s.restart_count, 2);
        assert!(!s.ready);
        let term = s
            .state
            .and_then(|s| s.terminated)
            .map(|t| (t.exit_code, t.reason));
        assert_eq!(term, Some((3, Some("Error".to_string()))));
        let init_ok = ctr(exited(0)).to_api(true);
        assert!(init_ok.ready);
        assert!(!ctr(running()).to_api(false).ready);
        assert!(ready(ctr(running())).to_api(false).ready);
        assert!(!ready(ctr(exited(0))).to_api(false).ready);
    }
}
