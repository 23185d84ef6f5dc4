//! One task per pod bound to the node: it owns the pod's processes from the first start to
//! the final delete, and is the only writer of the pod's status.
//!
//! Files of a pod live in `<work-dir>/<namespace>_<name>_<uid>/`: the container logs
//! (`<container>.log`, appended across restarts; there is no kubelet API, so `kubectl logs`
//! does not work — read these files), `pid` (the pod's process group while it exists) and
//! `serviceaccount/` (see token.rs). It is also the working directory and `HOME` of every
//! container of the pod.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Ctx;
use crate::command;
use crate::env::{self, PodFacts};
use crate::node::HOST_IP;
use crate::podstatus::{self, PodView, Transitions};
use crate::probe::{self, ProbeKind, ProbeMsg};
use crate::runtime::{self, Launch, Sandbox};
use crate::status::{self, BACKOFF_INITIAL, BACKOFF_RESET_AFTER, Ctr, Exit, Phase, State};
use crate::token;

/// What the pod manager tells a worker.
pub enum Update {
    /// The pod object changed (or was listed again).
    Pod(Box<Pod>),
    /// The pod is gone from the API (force-deleted): kill at once, write nothing.
    Gone,
    /// The runner is exiting: stop the processes, write nothing.
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Init,
    Main,
}

struct ExitMsg {
    kind: Kind,
    index: usize,
    run_id: u64,
    code: i32,
    signal: Option<i32>,
    finished_at: Timestamp,
}

/// What a container's helper tasks report back to its worker.
enum Event {
    Exit(ExitMsg),
    Probe {
        kind: Kind,
        index: usize,
        run_id: u64,
        msg: ProbeMsg,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Running containers and applying the restart policy.
    Active,
    /// Every container is done for good; waiting for the pod to be deleted.
    Terminal,
    /// Deletion requested: SIGTERM sent, SIGKILL at the deadline.
    Terminating {
        deadline: Instant,
        killed: bool,
    },
    /// Processes gone; final status and the delete are being written.
    Finalizing,
    Done,
}

enum TokenState {
    Unknown,
    NotWanted,
    Have { refresh_at: Instant },
    Failed { retry_at: Instant, message: String },
}

pub struct Worker {
    ctx: Arc<Ctx>,
    pod: Pod,
    ns: String,
    name: String,
    uid: String,
    dir: PathBuf,
    policy: String,
    ip: Option<Ipv4Addr>,
    ip_held: bool,
    sandbox: Option<Sandbox>,
    sandbox_ready: bool,
    init: Vec<Ctr>,
    main: Vec<Ctr>,
    init_next: usize,
    init_failed: bool,
    mode: Mode,
    prepared: bool,
    /// The pod was already finished (Succeeded/Failed) or being deleted when this runner
    /// found it: its status is history written by an earlier runner and is left untouched.
    keep_prior_status: bool,
    token: TokenState,
    start_time: Timestamp,
    transitions: Transitions,
    written: Option<serde_json::Value>,
    retry_at: Option<Instant>,
    events: mpsc::UnboundedSender<Event>,
}

const CONFIG_RETRY_MAX: Duration = Duration::from_secs(10);

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

fn api_error_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

impl Worker {
    /// Starts the worker of one pod; it runs until the pod is finalized, gone, or the
    /// runner shuts down.
    pub fn spawn(
        ctx: Arc<Ctx>,
        pod: Pod,
    ) -> (mpsc::UnboundedSender<Update>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let dir = ctx.work_dir.join(format!("{ns}_{name}_{uid}"));
        let worker = Worker {
            policy: spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".to_string()),
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| Ctr::new(&c.name, c.image.as_deref().unwrap_or(""), is_sidecar(c)))
                .collect(),
            main: spec
                .containers
                .iter()
                .map(|c| Ctr::new(&c.name, c.image.as_deref().unwrap_or(""), false))
                .collect(),
            ctx,
            pod,
            ns,
            name,
            uid,
            dir,
            ip: None,
            ip_held: false,
            sandbox: None,
            sandbox_ready: false,
            init_next: 0,
            init_failed: false,
            mode: Mode::Active,
            prepared: false,
            keep_prior_status: false,
            token: TokenState::Unknown,
            start_time: Timestamp::now(),
            transitions: Transitions::default(),
            written: None,
            retry_at: None,
            events,
        };
        let handle = tokio::spawn(worker.run(rx, events_rx));
        (tx, handle)
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Update>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        tracing::info!(pod = %self.key(), "pod assigned to this node");
        self.prepare();
        self.step().await;
        while self.mode != Mode::Done {
            let deadline = self.next_deadline();
            tokio::select! {
                update = rx.recv() => match update {
                    Some(Update::Pod(pod)) => self.on_pod(*pod),
                    Some(Update::Gone) | None => {
                        self.kill_now().await;
                        break;
                    }
                    Some(Update::Shutdown) => {
                        self.shutdown(&mut events).await;
                        break;
                    }
                },
                Some(event) = events.recv() => match event {
                    Event::Exit(exit) => self.on_exit(exit),
                    Event::Probe { kind, index, run_id, msg } => self.on_probe(kind, index, run_id, msg),
                },
                () = tokio::time::sleep_until(deadline) => {}
            }
            self.step().await;
        }
        tracing::info!(pod = %self.key(), "pod worker finished");
    }

    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    fn deletion_requested(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    fn all_ctrs(&self) -> impl Iterator<Item = &Ctr> {
        self.init.iter().chain(self.main.iter())
    }

    fn all_ctrs_mut(&mut self) -> impl Iterator<Item = &mut Ctr> {
        self.init.iter_mut().chain(self.main.iter_mut())
    }

    fn ctr_mut(&mut self, kind: Kind, index: usize) -> Option<&mut Ctr> {
        match kind {
            Kind::Init => self.init.get_mut(index),
            Kind::Main => self.main.get_mut(index),
        }
    }

    fn spec_container(&self, kind: Kind, index: usize) -> Option<Container> {
        let spec = self.pod.spec.as_ref()?;
        match kind {
            Kind::Init => spec.init_containers.as_ref()?.get(index).cloned(),
            Kind::Main => spec.containers.get(index).cloned(),
        }
    }

    fn any_running(&self) -> bool {
        self.all_ctrs().any(Ctr::is_running)
    }

    fn init_done(&self) -> bool {
        self.init_next >= self.init.len()
    }

    fn phase(&self) -> Phase {
        status::phase(self.init_failed, self.init_done(), &self.main)
    }

    /// First look at the pod: pick up where an earlier runner left it, take an IP.
    fn prepare(&mut self) {
        let prior = self.pod.status.clone().unwrap_or_default();
        if let Some(t) = &prior.start_time {
            self.start_time = t.0;
        }
        self.transitions = Transitions::from_conditions(prior.conditions.iter().flatten());
        if matches!(prior.phase.as_deref(), Some("Succeeded" | "Failed")) {
            self.keep_prior_status = true;
            self.mode = Mode::Terminal;
            self.prepared = true;
            return;
        }
        if self.deletion_requested() {
            // Nothing of it runs here yet; never start a pod that is on its way out.
            self.keep_prior_status = true;
            self.prepared = true;
            return;
        }

        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            // A host-network pod shares the node's address, as on a real node.
            self.ip = HOST_IP.parse().ok();
            self.ip_held = false;
        } else {
            // Keep the address an earlier runner gave the pod; pod IPs do not change.
            let previous_ip = prior
                .pod_ip
                .as_deref()
                .and_then(|s| s.parse::<Ipv4Addr>().ok());
            let mut ips = self.ctx.ips();
            self.ip = match previous_ip {
                Some(ip) if ips.reserve(ip) => Some(ip),
                _ => ips.allocate(),
            };
            drop(ips);
            self.ip_held = self.ip.is_some();
        }
        if self.ip.is_none() {
            tracing::error!(pod = %self.key(), "no free pod IP; retrying");
            self.retry_at = Some(Instant::now() + Duration::from_secs(5));
            return;
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            tracing::error!(pod = %self.key(), error = %e, "creating pod directory; retrying");
            self.retry_at = Some(Instant::now() + Duration::from_secs(5));
            return;
        }
        self.prepared = true;

        // Containers that were running under an earlier runner died with it (its pause
        // processes take their groups down): count them as killed and apply the policy.
        let now = Timestamp::now();
        let mut killed = Vec::new();
        for (kind, list, statuses) in [
            (
                Kind::Init,
                &mut self.init,
                prior.init_container_statuses.as_ref(),
            ),
            (
                Kind::Main,
                &mut self.main,
                prior.container_statuses.as_ref(),
            ),
        ] {
            for (i, c) in list.iter_mut().enumerate() {
                let Some(s) = statuses.and_then(|ss| ss.iter().find(|s| s.name == c.name)) else {
                    continue;
                };
                c.restart_count = s.restart_count;
                c.last = s
                    .last_state
                    .as_ref()
                    .and_then(|l| l.terminated.as_ref())
                    .map(Exit::from_api);
                c.ever_started = c.last.is_some() || c.restart_count > 0;
                let state = s.state.clone().unwrap_or_default();
                if let Some(r) = state.running {
                    c.ever_started = true;
                    c.state = State::Running {
                        pid: 0,
                        started_at: r.started_at.map_or(now, |t| t.0),
                    };
                    killed.push((kind, i));
                } else if let Some(t) = state.terminated {
                    c.ever_started = true;
                    c.state = State::Terminated(Exit::from_api(&t));
                }
            }
        }
        if !killed.is_empty() {
            tracing::info!(pod = %self.key(), containers = killed.len(), "found containers of an earlier runner; treating them as killed");
        }
        for (kind, index) in killed {
            let run_id = self.ctr_mut(kind, index).map_or(0, |c| c.run_id);
            self.on_exit(ExitMsg {
                kind,
                index,
                run_id,
                code: 137,
                signal: Some(libc::SIGKILL),
                finished_at: now,
            });
        }
        // Completed init containers of an earlier run stay completed.
        self.advance_init();
    }

    fn on_pod(&mut self, pod: Pod) {
        if pod.metadata.uid.as_deref() != Some(self.uid.as_str()) {
            return;
        }
        self.pod = pod;
        if let Mode::Terminating { deadline, killed } = self.mode {
            // A second delete may shorten the grace period (kubectl delete --grace-period=1).
            let grace = self.grace_period();
            let new_deadline = Instant::now() + grace;
            if new_deadline < deadline {
                self.mode = Mode::Terminating {
                    deadline: new_deadline,
                    killed,
                };
            }
        }
    }

    fn grace_period(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| self.pod.spec.as_ref()?.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0);
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    }

    /// Schedules the next init container, or the main containers once init is complete.
    fn advance_init(&mut self) {
        while let Some(c) = self.init.get(self.init_next) {
            // A sidecar counts once it has started (passed its startup probe, if any).
            let complete = if c.sidecar {
                c.ever_started && (c.started || !c.is_running())
            } else {
                c.succeeded()
            };
            if !complete {
                break;
            }
            self.init_next += 1;
        }
        if self.init_failed || self.mode != Mode::Active {
            return;
        }
        let now = Instant::now();
        let schedule = |c: &mut Ctr| {
            if !c.is_running() && c.next_start.is_none() && matches!(c.state, State::Waiting { .. })
            {
                c.next_start = Some(now);
            }
        };
        match self.init.get_mut(self.init_next) {
            Some(c) => schedule(c),
            None => self.main.iter_mut().for_each(schedule),
        }
        // Sidecars that were started earlier must be running beside whatever comes next.
        for c in self.init.iter_mut().filter(|c| c.sidecar && c.ever_started) {
            schedule(c);
        }
    }

    fn on_probe(&mut self, kind: Kind, index: usize, run_id: u64, msg: ProbeMsg) {
        let active = self.mode == Mode::Active;
        let pod = self.key();
        let grace = self.container_grace(kind, index, &msg);
        let Some(c) = self.ctr_mut(kind, index) else {
            return;
        };
        if c.run_id != run_id || !c.is_running() {
            return;
        }
        match msg {
            ProbeMsg::Started => c.started = true,
            ProbeMsg::Ready(ready) => c.ready = ready,
            ProbeMsg::Failed {
                kind: probe_kind,
                message,
            } => {
                if !active || c.kill_at.is_some() {
                    return;
                }
                let what = if probe_kind == ProbeKind::Startup {
                    "startup"
                } else {
                    "liveness"
                };
                tracing::info!(pod = %pod, container = %c.name, error = %message, "container failed its {what} probe; restarting it");
                // Only the container's own process is signalled: the group is the pod's.
                if let Some(pid) = c.pid() {
                    runtime::signal_pid(pid, libc::SIGTERM);
                }
                c.kill_at = Some(Instant::now() + grace);
            }
        }
        if kind == Kind::Init {
            self.advance_init();
        }
    }

    /// Grace for killing one container after a failed probe: the probe's own
    /// terminationGracePeriodSeconds, else the pod's.
    fn container_grace(&self, kind: Kind, index: usize, msg: &ProbeMsg) -> Duration {
        let probe_grace = match msg {
            ProbeMsg::Failed {
                kind: probe_kind, ..
            } => self.spec_container(kind, index).and_then(|c| {
                let p = if *probe_kind == ProbeKind::Startup {
                    c.startup_probe
                } else {
                    c.liveness_probe
                };
                p?.termination_grace_period_seconds
            }),
            _ => None,
        };
        let secs = probe_grace
            .or_else(|| self.pod.spec.as_ref()?.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0);
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    }

    fn on_exit(&mut self, msg: ExitMsg) {
        let active = self.mode == Mode::Active;
        let policy = self.policy.clone();
        let pod_name = self.name.clone();
        let pod_key = self.key();
        let Some(c) = self.ctr_mut(msg.kind, msg.index) else {
            return;
        };
        if msg.run_id != c.run_id {
            return;
        }
        c.end_run();
        let started_at = match c.state {
            State::Running { started_at, .. } => Some(started_at),
            _ => None,
        };
        let mut exit = Exit::from_code(msg.code, msg.signal, started_at, msg.finished_at);
        exit.container_id = c
            .pid()
            .filter(|p| *p > 0)
            .map(|p| format!("localnode://{p}"));
        let ran_for = started_at
            .map(|s| msg.finished_at.duration_since(s).unsigned_abs())
            .unwrap_or_default();
        if ran_for >= BACKOFF_RESET_AFTER {
            c.backoff = BACKOFF_INITIAL;
        }
        tracing::info!(pod = %pod_key, container = %c.name, code = msg.code, signal = ?msg.signal, "container exited");
        if !active {
            c.state = State::Terminated(exit);
            return;
        }
        let restart = match (msg.kind, c.sidecar) {
            (Kind::Init, true) => true,
            (Kind::Init, false) => {
                let init_policy = if policy == "Always" {
                    "OnFailure"
                } else {
                    policy.as_str()
                };
                status::should_restart(init_policy, msg.code)
            }
            (Kind::Main, _) => status::should_restart(&policy, msg.code),
        };
        if restart {
            let delay = c.take_backoff();
            c.state = State::waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {}s restarting failed container={} pod={pod_name}",
                    delay.as_secs(),
                    c.name
                )),
            );
            c.last = Some(exit);
            c.next_start = Some(Instant::now() + delay);
            return;
        }
        let code = exit.code;
        c.state = State::Terminated(exit);
        c.next_start = None;
        if msg.kind == Kind::Init {
            if code == 0 {
                self.advance_init();
            } else {
                self.init_failed = true;
            }
        }
    }

    /// Everything that follows from the current state: starts, kills, status, delete.
    async fn step(&mut self) {
        let retry_due = self.retry_at.is_some_and(|t| t <= Instant::now());
        if retry_due {
            self.retry_at = None;
        }
        if !self.prepared && !self.deletion_requested() {
            if retry_due {
                self.prepare();
            }
            if !self.prepared {
                return;
            }
        }
        if self.deletion_requested() && matches!(self.mode, Mode::Active | Mode::Terminal) {
            self.begin_termination().await;
        }
        match self.mode {
            Mode::Active => {
                self.refresh_token_if_due().await;
                let now = Instant::now();
                for c in self
                    .all_ctrs_mut()
                    .filter(|c| c.kill_at.is_some_and(|t| t <= now))
                {
                    c.kill_at = None;
                    if let Some(pid) = c.pid() {
                        runtime::signal_pid(pid, libc::SIGKILL);
                    }
                }
                self.start_due().await;
                if self.phase().is_terminal() {
                    tracing::info!(pod = %self.key(), phase = self.phase().as_str(), "pod finished");
                    self.mode = Mode::Terminal;
                    // Sidecars and anything the containers left behind go with the pod.
                    self.teardown().await;
                }
            }
            Mode::Terminating { deadline, killed } => {
                if !self.any_running() {
                    self.mode = Mode::Finalizing;
                } else if !killed && Instant::now() >= deadline {
                    tracing::info!(pod = %self.key(), "grace period over; killing");
                    self.signal_all(libc::SIGKILL);
                    self.mode = Mode::Terminating {
                        deadline,
                        killed: true,
                    };
                }
            }
            Mode::Terminal | Mode::Finalizing | Mode::Done => {}
        }
        if self.mode == Mode::Finalizing {
            self.finalize().await;
            return;
        }
        self.flush_status().await;
    }

    fn next_deadline(&self) -> Instant {
        let mut next = far_future();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        consider(self.retry_at);
        match self.mode {
            Mode::Active => {
                for c in self.all_ctrs() {
                    consider(c.next_start);
                    consider(c.kill_at);
                }
                // A failed token request is retried by the next container start.
                if let TokenState::Have { refresh_at } = &self.token {
                    consider(Some(*refresh_at));
                }
            }
            Mode::Terminating {
                deadline,
                killed: false,
            } => consider(Some(deadline)),
            // After SIGKILL the exits arrive by themselves; poll now and then all the same.
            Mode::Terminating { killed: true, .. } => {
                consider(Some(Instant::now() + Duration::from_secs(1)))
            }
            _ => {}
        }
        next
    }

    fn sa_dir(&self) -> PathBuf {
        self.dir.join("serviceaccount")
    }

    async fn fetch_token(&mut self) -> Result<bool, String> {
        let sa = env::service_account_name(&self.pod);
        if !token::wanted(&self.ctx.client, &self.pod, &sa).await? {
            return Ok(false);
        }
        let t = token::request(&self.ctx.client, &self.pod, &sa).await?;
        token::write_files(&self.sa_dir(), &t.token, &self.ctx.ca_pem, &self.ns)
            .map_err(|e| format!("writing service account files: {e}"))?;
        self.token = TokenState::Have {
            refresh_at: Instant::now() + t.refresh_in,
        };
        Ok(true)
    }

    /// Makes sure the pod's token is in place before a container starts.
    async fn ensure_token(&mut self) -> Result<(), String> {
        match &self.token {
            TokenState::NotWanted | TokenState::Have { .. } => return Ok(()),
            TokenState::Failed { retry_at, message } if *retry_at > Instant::now() => {
                return Err(message.clone());
            }
            _ => {}
        }
        match self.fetch_token().await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.token = TokenState::NotWanted;
                Ok(())
            }
            Err(message) => {
                tracing::warn!(pod = %self.key(), error = %message, "service account token");
                self.token = TokenState::Failed {
                    retry_at: Instant::now() + Duration::from_secs(2),
                    message: message.clone(),
                };
                Err(message)
            }
        }
    }

    async fn refresh_token_if_due(&mut self) {
        let TokenState::Have { refresh_at } = self.token else {
            return;
        };
        if refresh_at > Instant::now() {
            return;
        }
        if let Err(e) = self.fetch_token().await {
            // The old token stays valid for a fifth of its life; try again soon.
            tracing::warn!(pod = %self.key(), error = %e, "refreshing service account token");
            self.token = TokenState::Have {
                refresh_at: Instant::now() + Duration::from_secs(10),
            };
        }
    }

    async fn start_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(Kind, usize)> = self
            .init
            .iter()
            .enumerate()
            .map(|(i, c)| (Kind::Init, i, c))
            .chain(
                self.main
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (Kind::Main, i, c)),
            )
            .filter(|(_, _, c)| c.next_start.is_some_and(|t| t <= now))
            .map(|(k, i, _)| (k, i))
            .collect();
        for (kind, index) in due {
            if self.mode != Mode::Active || self.init_failed {
                return;
            }
            self.start(kind, index).await;
        }
    }

    /// The variables the runner provides to every container; the pod's own env wins.
    fn base_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), self.ctx.path.clone());
        env.insert("HOME".to_string(), self.dir.display().to_string());
        let hostname = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.name.clone());
        env.insert("HOSTNAME".to_string(), hostname);
        // In-cluster clients (kube::Config::incluster, client-go) find the apiserver here.
        env.insert(
            "KUBERNETES_SERVICE_HOST".to_string(),
            self.ctx.api_host.clone(),
        );
        env.insert(
            "KUBERNETES_SERVICE_PORT".to_string(),
            self.ctx.api_port.to_string(),
        );
        env.insert(
            "KUBERNETES_SERVICE_PORT_HTTPS".to_string(),
            self.ctx.api_port.to_string(),
        );
        env.insert(
            "KUBERNETES_PORT".to_string(),
            format!("tcp://{}:{}", self.ctx.api_host, self.ctx.api_port),
        );
        if matches!(self.token, TokenState::Have { .. }) {
            env.insert(
                "TRIAD_SERVICEACCOUNT_DIR".to_string(),
                self.sa_dir().display().to_string(),
            );
        }
        for key in ["LANG", "LC_ALL", "TZ", "TMPDIR", "RUST_BACKTRACE"] {
            if let Ok(v) = std::env::var(key) {
                env.insert(key.to_string(), v);
            }
        }
        env
    }

    /// A container could not be configured (token, ConfigMap, Secret, downward API): the
    /// kubelet keeps retrying these whatever the restart policy, since the fix is usually
    /// to create the missing object.
    fn config_error(&mut self, kind: Kind, index: usize, message: String) {
        let pod = self.key();
        if let Some(c) = self.ctr_mut(kind, index) {
            tracing::warn!(pod = %pod, container = %c.name, error = %message, "cannot configure container");
            c.state = State::waiting("CreateContainerConfigError", Some(message));
            // Retry at least every 10 s: the fix (creating the object) is usually on its way.
            c.next_start = Some(Instant::now() + c.take_backoff().min(CONFIG_RETRY_MAX));
        }
    }

    /// The process could not be started (no such executable, spawn failed). Under a policy
    /// that restarts, keep trying with backoff; under `Never` it is a terminated container
    /// with exit code 128, as a runtime reports a `StartError`.
    fn start_error(&mut self, kind: Kind, index: usize, message: String) {
        let policy = self.policy.clone();
        let pod = self.key();
        let Some(c) = self.ctr_mut(kind, index) else {
            return;
        };
        tracing::warn!(pod = %pod, container = %c.name, error = %message, "cannot start container");
        if policy == "Never" && !c.sidecar {
            let mut exit = Exit::from_code(128, None, None, Timestamp::now());
            exit.reason = "StartError".into();
            exit.message = Some(message);
            c.state = State::Terminated(exit);
            c.next_start = None;
            if kind == Kind::Init {
                self.init_failed = true;
            }
        } else {
            c.state = State::waiting("CreateContainerError", Some(message));
            c.next_start = Some(Instant::now() + c.take_backoff());
        }
    }

    async fn ensure_sandbox(&mut self) -> Result<i32, String> {
        if let Some(sb) = self.sandbox.as_mut() {
            if sb.is_alive() {
                return Ok(sb.pgid());
            }
            tracing::warn!(pod = %self.key(), "pod's pause process died; recreating its process group");
        }
        if let Some(old) = self.sandbox.take() {
            old.destroy().await;
        }
        let sb = Sandbox::create(&self.dir)
            .map_err(|e| format!("creating the pod's process group: {e}"))?;
        let pgid = sb.pgid();
        self.sandbox = Some(sb);
        self.sandbox_ready = true;
        Ok(pgid)
    }

    async fn start(&mut self, kind: Kind, index: usize) {
        let Some(spec) = self.spec_container(kind, index) else {
            if let Some(c) = self.ctr_mut(kind, index) {
                c.next_start = None;
            }
            return;
        };
        if let Some(c) = self.ctr_mut(kind, index) {
            c.next_start = None;
        }
        if let Err(message) = self.ensure_token().await {
            return self.config_error(kind, index, message);
        }
        let ip = self.ip.map(|ip| ip.to_string()).unwrap_or_default();
        let facts = PodFacts {
            pod: &self.pod,
            pod_ip: &ip,
            host_ip: HOST_IP,
        };
        let env = match env::container_env(&self.ctx.client, &facts, &spec, self.base_env()).await {
            Ok(env) => env,
            Err(message) => return self.config_error(kind, index, message),
        };
        let argv = match command::raw_argv(&spec) {
            Ok(argv) => command::expand_argv(&argv, &env),
            Err(message) => return self.start_error(kind, index, message),
        };
        let argv0 = argv.first().cloned().unwrap_or_default();
        let path_var = env.get("PATH").cloned().unwrap_or_default();
        let program = match command::resolve_program(
            &argv0,
            self.ctx.triad_bin.as_deref(),
            &path_var,
            &self.dir,
        ) {
            Ok(p) => p,
            Err(message) => return self.start_error(kind, index, message),
        };
        let pgid = match self.ensure_sandbox().await {
            Ok(pgid) => pgid,
            Err(message) => return self.start_error(kind, index, message),
        };
        let log = self.dir.join(format!("{}.log", spec.name));
        let launch = Launch {
            program: &program,
            argv: &argv,
            env: &env,
            cwd: &self.dir,
            log: &log,
            pgid,
        };
        let mut child = match runtime::spawn(&launch) {
            Ok(child) => child,
            Err(e) => {
                return self.start_error(
                    kind,
                    index,
                    format!("starting {}: {e}", program.display()),
                );
            }
        };
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let pod = self.key();
        let (dir, triad_bin, events) = (
            self.dir.clone(),
            self.ctx.triad_bin.clone(),
            self.events.clone(),
        );
        let Some(c) = self.ctr_mut(kind, index) else {
            return;
        };
        if c.ever_started {
            c.restart_count += 1;
        }
        c.ever_started = true;
        c.run_id += 1;
        c.started = spec.startup_probe.is_none();
        c.ready = !probe::has_probes(&spec);
        c.state = State::Running {
            pid,
            started_at: Timestamp::now(),
        };
        tracing::info!(pod = %pod, container = %c.name, pid, argv = ?argv, log = %log.display(), "container started");
        let run_id = c.run_id;
        if probe::has_probes(&spec) {
            let target = probe::Target {
                container: spec.clone(),
                pod_ip: ip,
                env,
                cwd: dir,
                pgid,
                triad_bin,
            };
            let events = events.clone();
            let report = move |msg| {
                events
                    .send(Event::Probe {
                        kind,
                        index,
                        run_id,
                        msg,
                    })
                    .is_ok()
            };
            c.probe_task = Some(tokio::spawn(probe::run(target, report)).abort_handle());
        }
        let tx = events;
        tokio::spawn(async move {
            let (code, signal) = match child.wait().await {
                Ok(st) => (
                    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
                    st.signal(),
                ),
                Err(_) => (255, None),
            };
            let _ = tx.send(Event::Exit(ExitMsg {
                kind,
                index,
                run_id,
                code,
                signal,
                finished_at: Timestamp::now(),
            }));
        });
        if kind == Kind::Init && self.init.get(index).is_some_and(|c| c.sidecar) {
            self.advance_init();
        }
    }

    /// Signals the pod's group and each container process (one that left the group too).
    fn signal_all(&self, sig: i32) {
        if let Some(sb) = &self.sandbox {
            sb.signal(sig);
        }
        for pid in self.all_ctrs().filter_map(Ctr::pid) {
            runtime::signal_pid(pid, sig);
        }
    }

    async fn teardown(&mut self) {
        for c in self.all_ctrs_mut() {
            if let Some(task) = c.probe_task.take() {
                task.abort();
            }
        }
        if let Some(sb) = self.sandbox.take() {
            sb.destroy().await;
        }
        self.release_ip();
    }

    fn release_ip(&mut self) {
        if self.ip_held
            && let Some(ip) = self.ip
        {
            self.ctx.ips().release(ip);
            self.ip_held = false;
        }
    }

    async fn begin_termination(&mut self) {
        for c in self.all_ctrs_mut() {
            c.next_start = None;
        }
        let grace = self.grace_period();
        if !self.any_running() {
            self.mode = Mode::Finalizing;
            return;
        }
        tracing::info!(pod = %self.key(), grace_secs = grace.as_secs(), "pod deleted; stopping containers");
        if grace.is_zero() {
            self.signal_all(libc::SIGKILL);
        } else {
            self.signal_all(libc::SIGTERM);
        }
        self.mode = Mode::Terminating {
            deadline: Instant::now() + grace,
            killed: grace.is_zero(),
        };
    }

    /// Processes are gone: final status (so Jobs and ReplicaSets see how it ended), then
    /// the delete with grace 0 that removes the object, guarded by the uid.
    async fn finalize(&mut self) {
        if self.retry_at.is_some() {
            return;
        }
        self.teardown().await;
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        if !self.keep_prior_status && self.prepared {
            self.flush_status().await;
        }
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name, &params).await {
            Ok(_) => tracing::info!(pod = %self.key(), "pod finalized"),
            Err(e) if matches!(api_error_code(&e), Some(404 | 409)) => {}
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %e, "deleting pod; retrying");
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                return;
            }
        }
        let _ = std::fs::remove_dir_all(self.sa_dir());
        self.mode = Mode::Done;
    }

    /// The pod was force-deleted: nothing to report to, nothing to wait for.
    async fn kill_now(&mut self) {
        if self.any_running() || self.sandbox.is_some() {
            tracing::info!(pod = %self.key(), "pod gone from the API; killing its processes");
        }
        self.signal_all(libc::SIGKILL);
        self.teardown().await;
        let _ = std::fs::remove_dir_all(self.sa_dir());
    }

    /// The runner is stopping: a short graceful stop, then SIGKILL. Status is not written;
    /// the next runner counts these containers as killed.
    async fn shutdown(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        self.mode = Mode::Terminal;
        if self.any_running() {
            self.signal_all(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.any_running() {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(Event::Exit(exit))) => self.on_exit(exit),
                    Ok(Some(Event::Probe { .. })) => {}
                    _ => break,
                }
            }
            self.signal_all(libc::SIGKILL);
        }
        self.teardown().await;
    }

    fn build_status(&mut self) -> serde_json::Value {
        let mut phase = self.phase();
        if matches!(self.mode, Mode::Finalizing) && !phase.is_terminal() {
            // A deleted pod ends Succeeded only if every container exited 0 (kubelet rule).
            phase = Phase::Failed;
        }
        let view = PodView {
            phase,
            init: &self.init,
            main: &self.main,
            init_next: self.init_next,
            sandbox_ready: self.sandbox_ready,
            ip: self.ip,
            start_time: self.start_time,
        };
        podstatus::pod_status(&view, &mut self.transitions)
    }

    async fn flush_status(&mut self) {
        if self.keep_prior_status || !self.prepared || self.mode == Mode::Done {
            return;
        }
        let body = self.build_status();
        if self.written.as_ref() == Some(&body) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                self.written = Some(body);
            }
            // Gone: the watch will say so; nothing to report to meanwhile.
            Err(e) if api_error_code(&e) == Some(404) => {}
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %e, "writing pod status; retrying");
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }
}
