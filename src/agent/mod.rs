//! The agent runtime (`triad agent -- <work command…>`): claim an item from the pool's
//! queues, run the work command once for it, report, repeat.
//!
//! | Module | Does |
//! |---|---|
//! | [`config`] | the env/flags the pool controller injects, validated |
//! | [`candidates`] | slim watch cache of the queues' items; what to claim next |
//! | [`heartbeat`] | the agent's Lease and whether it is still fresh |
//! | [`work`] | the work command's process group, report tailing, CPU/wall time |
//! | [`report`] | the report-line parser and the folded report state |
//! | [`writer`] | fenced writes: progress, usage, violations, outcomes |
//! | [`decide`] | pure: how an attempt ended; whether to stop the held item |
//! | [`metrics`] | the agent's Prometheus families |
//!
//! One item at a time. Everything written for a held item is fenced. Once the agent
//! has reason to believe it may have lost the item (fenced out, or its lease too old
//! to be sure it was not) it stops the work. It still writes the attempt's ending
//! after a lapse: the fence, not the lease, is what makes a write safe, and an item
//! nobody writes an ending for waits Running for the stall monitor.

pub mod candidates;
pub mod config;
pub mod decide;
pub mod heartbeat;
pub mod metrics;
pub mod remote;
pub mod report;
pub mod work;
pub mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use tokio::sync::{Notify, watch};

use self::candidates::{Choice, SharedCache, lock};
use self::config::AgentConfig;
use self::heartbeat::LeaseHealth;
use self::metrics::{AgentMetrics, outcome};
use self::remote::{RemoteWork, RunnerLink, StartError};
use self::report::ReportState;
use self::work::{Finished, Launch, ReportDir, ReportTail, Work, usage_with_measured};
use self::writer::{
    Attempt, Ending, ItemWriter, ending_ops, progress_ops, progress_value, violation_op,
};
use crate::api::{LifecycleType, OutcomeKind, WorkItem, WorkQueue};
use crate::core::attempt_log;
use crate::k8s::fence::{AgentIdentity, ClaimError, FenceError, claim};

/// How often the run loop looks at the report file, the lease and the held item.
const TICK: Duration = Duration::from_millis(200);
/// The runtime's own measurements (wall, CPU) are refreshed at most this often when
/// the command reports nothing, so budget monitors see long silent runs.
const MEASURED_REFRESH: Duration = Duration::from_secs(15);
/// CPUs the work may use at once: CPU time grows at most this much faster than wall time.
static CORES: std::sync::LazyLock<f64> = std::sync::LazyLock::new(|| {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
});
/// Upper bound on one API write, so a hung connection cannot stall the run loop.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the agent until it is told to stop (`shutdown` resolves: drain and exit), or
/// its lifecycle or empty-queue policy ends it.
pub async fn run(
    mut cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if cfg.runner_socket.is_none() {
        config::resolve_self(&mut cfg.command);
        config::check_command(&cfg.command).map_err(anyhow::Error::msg)?;
    }
    let client = crate::k8s::client::client()
        .await
        .context("connecting to the API server")?;
    let state = crate::serve::State::new();
    let metrics = state.with_registry(AgentMetrics::register);
    let server = crate::serve::spawn(cfg.metrics_addr, state.clone())
        .await
        .with_context(|| format!("serving metrics on {}", cfg.metrics_addr))?;
    tracing::info!(
        agent = %cfg.name, namespace = %cfg.namespace, pool = ?cfg.pool,
        queues = ?cfg.queues.iter().map(|q| format!("{}:{}", q.name, q.weight)).collect::<Vec<_>>(),
        metrics = %server.local_addr, command = ?cfg.command, "agent starting"
    );

    let (drain_tx, drain) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("asked to stop: draining");
        let _ = drain_tx.send(true);
    });

    let owner = cfg.pod_uid.clone().map(|uid| OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: cfg.name.clone(),
        uid,
        ..Default::default()
    });
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let lease_spec = heartbeat::LeaseSpec {
        agent: cfg.name.clone(),
        queues: cfg.queues.iter().map(|q| q.name.clone()).collect(),
        owner,
        duration: cfg.lease_duration,
    };
    let (lease_name, lease, renewer) =
        heartbeat::start(leases.clone(), lease_spec, metrics.clone())
            .await
            .context("acquiring the agent lease")?;

    let items: Api<WorkItem> = Api::namespaced(client.clone(), &cfg.namespace);
    let queues_api: Api<WorkQueue> = Api::namespaced(client.clone(), &cfg.namespace);
    let cache: SharedCache = Arc::new(std::sync::Mutex::new(candidates::Cache::new(
        &cfg.name,
        &cfg.queues,
    )));
    let changed = Arc::new(Notify::new());
    let watches = candidates::spawn_watches(
        items.clone(),
        queues_api,
        leases,
        &cfg.name,
        cfg.queues.clone(),
        cache.clone(),
        changed.clone(),
    );

    let runner = cfg
        .runner_socket
        .clone()
        .map(|socket| RunnerSlot { socket, link: None });
    let agent = Agent {
        runner,
        identity: AgentIdentity {
            agent: cfg.name.clone(),
            pod: Some(cfg.name.clone()),
            lease: Some(lease_name),
        },
        cfg,
        items,
        cache,
        changed,
        lease,
        metrics,
        drain,
        serve: state.clone(),
        claim_lapses: 0,
    };
    let result = agent.run().await;

    state.set_ready(false);
    renewer.abort();
    for w in watches {
        w.abort();
    }
    server.shutdown().await;
    match &result {
        Ok(why) => tracing::info!(%why, "agent stopped"),
        Err(e) => tracing::error!(error = %e, "agent failed"),
    }
    result.map(|_| ())
}

struct Agent {
    cfg: AgentConfig,
    identity: AgentIdentity,
    items: Api<WorkItem>,
    cache: SharedCache,
    changed: Arc<Notify>,
    lease: LeaseHealth,
    metrics: AgentMetrics,
    drain: watch::Receiver<bool>,
    serve: crate::serve::State,
    /// Lease lapses counted when the held item was claimed.
    claim_lapses: u64,
    /// The work container's runner, when the work runs there (agent pods); `None`
    /// runs the work as this process's child (`triad agent -- <command>`).
    runner: Option<RunnerSlot>,
}

struct RunnerSlot {
    socket: std::path::PathBuf,
    link: Option<RunnerLink>,
}

/// The held item's work: a child of this process, or a process in the work container.
enum Running {
    /// The work and its report directory (removed when this is dropped).
    Local(Work, ReportDir),
    Remote(RemoteWork),
}

/// Why waiting for the work gave no exit status.
enum WorkLost {
    Local(std::io::Error),
    /// The runner's connection ended: the work container exited or restarted.
    ContainerGone,
}

// === impl Running ===

impl Running {
    async fn wait(&mut self) -> Result<Finished, WorkLost> {
        match self {
            Running::Local(w, _) => w.wait().await.map_err(WorkLost::Local),
            Running::Remote(w) => w.wait().await.map_err(|_| WorkLost::ContainerGone),
        }
    }

    fn terminate(&self) {
        match self {
            Running::Local(w, _) => w.terminate(),
            Running::Remote(w) => w.terminate(),
        }
    }

    fn kill(&self) {
        match self {
            Running::Local(w, _) => w.kill(),
            Running::Remote(w) => w.kill(),
        }
    }

    fn elapsed(&self) -> Duration {
        match self {
            Running::Local(w, _) => w.elapsed(),
            Running::Remote(w) => w.elapsed(),
        }
    }

    fn cpu_seconds_so_far(&self) -> f64 {
        match self {
            Running::Local(w, _) => w.cpu_seconds_so_far(),
            Running::Remote(w) => w.cpu_seconds_so_far(),
        }
    }

    /// How many CPUs' worth of time the work can use per second of wall time, as far as
    /// deciding when to measure goes: measuring a local process group reads /proc, so it
    /// waits until this process's CPUs could have used the budget; the runner's figure is
    /// already at hand (and its container's CPUs may differ), so it is always read.
    fn cpu_rate_bound(&self) -> f64 {
        match self {
            Running::Local(..) => *CORES,
            Running::Remote(_) => f64::INFINITY,
        }
    }

    fn last_stderr_line(&self) -> String {
        match self {
            Running::Local(w, _) => w.last_stderr_line(),
            Running::Remote(w) => w.last_stderr_line(),
        }
    }

    fn report_path(&self) -> &std::path::Path {
        match self {
            Running::Remote(w) => &w.report,
            Running::Local(_, dir) => &dir.path,
        }
    }
}

/// Why the agent stopped the held item's work before it ended by itself.
#[derive(Clone, Debug, PartialEq)]
enum Stop {
    /// Cooperative cancel (`spec.cancel`, `CancelRequested`): end as asked.
    Cancel(Ending),
    /// The agent is draining and the work did not finish in time: outcome Released.
    Drain,
    /// The claim is no longer ours: write nothing.
    Fenced,
    /// The lease is too old to be sure the claim is ours, so the work must stop (another
    /// agent may be running the item by now); then the item is handed back with a fenced
    /// write, ending as a cancel or drain already under way asked (`Some`) or as
    /// `Failed`/`LeaseLost` (`decide::lease_lost`).
    LeaseLost(Option<Ending>),
}

/// What became of an attempt's ending.
#[derive(Debug)]
enum Written {
    /// The API server took it; the kind is what was written (it may differ from the
    /// ending asked for: a refused completion is recorded as a failure).
    Accepted(OutcomeKind),
    /// The fence refused it: the item is no longer ours.
    Fenced,
    /// The API server refused the content.
    Refused,
    GaveUp(decide::GiveUp),
}

/// How one item went, for the run loop.
enum Handled {
    Done,
    /// The work command could not be started: the agent itself is broken.
    Broken(anyhow::Error),
}

impl Agent {
    fn draining(&self) -> bool {
        *self.drain.borrow()
    }

    async fn run(mut self) -> anyhow::Result<&'static str> {
        let result = self.run_loop().await;
        // The agent is done for good (drained, mortal, queues empty): so is the work
        // container, so that the pod can end and be replaced.
        if result.is_ok()
            && let Some(link) = self.runner.take().and_then(|s| s.link)
        {
            link.shutdown().await;
        }
        result
    }

    async fn run_loop(&mut self) -> anyhow::Result<&'static str> {
        // Claim nothing before every watch has listed: a half-filled cache would
        // ignore maxInFlight and priorities.
        loop {
            if lock(&self.cache).synced() {
                break;
            }
            if self.draining() {
                return Ok("stopped before the caches synced");
            }
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.drain.changed() => {}
            }
        }
        self.serve.set_ready(true);
        tracing::info!("caches synced; claiming");

        let mut skip: HashMap<String, u64> = HashMap::new();
        // Recent claim round trip (moving average): how long others' claims take to
        // show up, roughly, and so how long to leave items to the agents ahead.
        let mut claim_round_trip = Duration::from_millis(10);
        // Share of recent claims lost, or found taken by a precheck (moving average).
        let mut contention = 0.0_f64;
        let mut done: u32 = 0;
        let mut idle_since: Option<Instant> = None;
        loop {
            if self.draining() {
                return Ok("drained");
            }
            if self.cfg.lifecycle == LifecycleType::Mortal
                && self.cfg.max_items.is_some_and(|m| done >= m)
            {
                return Ok("mortal agent finished its items");
            }
            if !self.ensure_runner().await {
                continue;
            }
            if !self.lease.fresh() {
                // Nothing may be claimed on a lease we cannot vouch for; the
                // heartbeat keeps trying and we resume once it succeeds.
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = self.drain.changed() => {}
                }
                continue;
            }
            if skip.len() > 10_000 {
                skip.clear();
            }
            let choice = {
                let mut rng = rand::rng();
                lock(&self.cache).pick(
                    &skip,
                    self.cfg.top_k,
                    crate::core::ordering::claim_defer_step(claim_round_trip),
                    jiff::Timestamp::now(),
                    Instant::now(),
                    &mut rng,
                )
            };
            let pick = match choice {
                Choice::Claim(pick) => pick,
                Choice::WaitUntil(at) => {
                    // Agents that prefer these items get a head start; look again when
                    // it is over, or sooner if the watch brings news.
                    idle_since = None;
                    tokio::select! {
                        _ = self.changed.notified() => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = self.drain.changed() => {}
                    }
                    continue;
                }
                Choice::Nothing => {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if self.cfg.empty_queue_policy == crate::api::EmptyQueuePolicy::Exit
                        && since.elapsed() >= self.cfg.idle_exit
                    {
                        return Ok("queues empty (empty-queue policy Exit)");
                    }
                    // Woken by any watch event; the timeout covers retryAt/notBefore passing.
                    tokio::select! {
                        _ = self.changed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.drain.changed() => {}
                    }
                    continue;
                }
            };
            idle_since = None;
            for candidate in pick.order {
                if self.draining() || !self.lease.fresh() {
                    break;
                }
                let name = candidate.name.clone();
                let rv = candidate.resource_version;
                if decide::precheck_claims(contention, self.cfg.precheck_above) {
                    self.metrics.claim_prechecks.inc();
                    if !self.still_as_seen(&name, rv).await {
                        self.metrics.claim_prechecks_taken.inc();
                        contention = decide::contention_after(contention, true);
                        skip.insert(name, rv);
                        continue;
                    }
                }
                self.metrics.claim_attempts.inc();
                // A lapse from here on means the claim may have been taken from us.
                self.claim_lapses = self.lease.lapses();
                // Keep the whole view of this item from now on: its events may arrive
                // before the claim's response.
                {
                    let mut cache = lock(&self.cache);
                    // Measured only: as the defer step it did not lower lost claims
                    // (docs/performance.md, round 4).
                    if let Some(shown) = cache.take_claim_shown() {
                        self.metrics.claim_shown.observe(shown.as_secs_f64());
                    }
                    cache.hold(&name);
                }
                let sent = Instant::now();
                let claimed = claim(&self.items, &candidate.as_item(), &self.identity).await;
                claim_round_trip = (claim_round_trip * 7 + sent.elapsed()) / 8;
                if claimed.is_err() {
                    lock(&self.cache).release();
                }
                contention = decide::contention_after(
                    contention,
                    matches!(claimed, Err(ClaimError::Conflict)),
                );
                match claimed {
                    Ok(item) => {
                        lock(&self.cache).claimed(&item);
                        // Our claim's old version may still be in the cache for a moment.
                        skip.insert(name.clone(), rv);
                        self.metrics
                            .claim_latency
                            .observe(candidate.seen.elapsed().as_secs_f64());
                        tracing::info!(item = %name, queue = %pick.queue, attempt = item.status.as_ref().map(|s| s.attempt), "claimed");
                        done += 1;
                        let handled = self.handle(item).await;
                        lock(&self.cache).release();
                        if let Handled::Broken(e) = handled {
                            return Err(e);
                        }
                        break;
                    }
                    Err(ClaimError::Conflict) => {
                        // Another agent won (or the item moved on): never the same head
                        // again at this version, and choose again from the freshest
                        // cache rather than from this now-stale order.
                        self.metrics.claim_conflicts.inc();
                        // Our cache was behind the API server. Choosing again at once
                        // would pick from the same stale view (more lost claims, each a
                        // refused write); wait briefly for it to show the winner.
                        let step = crate::core::ordering::claim_defer_step(claim_round_trip);
                        self.catch_up(&name, rv, step * 2).await;
                        skip.insert(name, rv);
                        break;
                    }
                    Err(ClaimError::NotFound) => {
                        skip.insert(name, rv);
                    }
                    Err(ClaimError::Api(e)) => {
                        tracing::warn!(item = %name, error = %e, "claim failed");
                        skip.insert(name, rv);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }

    /// Whether `name` is still at `resource_version` in etcd: a consistent read of its
    /// metadata. Our watch, and the API server's own cache, can run hundreds of
    /// milliseconds behind a busy API server (`triad_agent_claim_shown_seconds`), and
    /// then most items they show free are taken; a read costs far less than a refused
    /// claim (test before test-and-set). When the read fails, the claim finds out.
    async fn still_as_seen(&self, name: &str, resource_version: u64) -> bool {
        match self.items.get_metadata_opt(name).await {
            Ok(Some(current)) => {
                current.metadata.resource_version.as_deref().map(str::parse)
                    == Some(Ok(resource_version))
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Waits until the cache shows `name` past `resource_version`, at most `limit`.
    async fn catch_up(&mut self, name: &str, resource_version: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !lock(&self.cache).moved_past(name, resource_version) {
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = self.drain.changed() => return,
            }
        }
    }

    /// Runs one claimed item to its end and writes the outcome (or nothing, if the
    /// item was taken from us).
    async fn handle(&mut self, item: WorkItem) -> Handled {
        self.metrics.busy.set(1);
        // Bracket the attempt in the container log, for `kubectl triad logs --attempt`.
        let marker =
            Attempt::of(&item).map(|a| (format!("{}/{}", self.cfg.namespace, a.name), a.attempt));
        if let Some((key, attempt)) = &marker {
            println!("{}", attempt_log::begin_line(key, *attempt));
        }
        let handled = self.handle_inner(item).await;
        if let Some((key, attempt)) = &marker {
            println!("{}", attempt_log::end_line(key, *attempt));
        }
        self.metrics.busy.set(0);
        handled
    }

    async fn handle_inner(&mut self, item: WorkItem) -> Handled {
        let Some(attempt) = Attempt::of(&item) else {
            tracing::error!("claimed item has no claim in its status; skipping it");
            return Handled::Done;
        };
        let writer = ItemWriter {
            api: self.items.clone(),
            attempt,
        };
        let name = writer.attempt.name.clone();
        let key = format!("{}/{}", self.cfg.namespace, name);

        // The time budgets, from the full item: the slim view drops its budget.
        let mut time_budget = decide::TimeBudgetWatch::new(
            &item.spec.budget,
            &lock(&self.cache).queue_time_budget(item.effective_queue()),
        );
        // Too large or nested too deep: fails without running.
        let payload = work::work_input(item.spec.payload.as_ref());
        // From here on only the slim view is kept: the payload lives in `payload` only.
        let mut view = candidates::slim(item);
        let payload = match payload {
            Ok(payload) => payload,
            Err(ending) => {
                self.finish_unstarted(&writer, &ending).await;
                return Handled::Done;
            }
        };

        let grace = lock(&self.cache).cancel_grace(view.effective_queue());
        let mut work = match self.start_work(&key, &writer, payload, grace).await {
            Ok(started) => started,
            Err(handled) => return handled,
        };
        let mut tail = match ReportTail::open(work.report_path()).await {
            Ok(t) => t,
            Err(e) => {
                work.kill();
                let _ = work.wait().await;
                self.give_back_link(work);
                return self
                    .cannot_start(
                        &writer,
                        anyhow::Error::new(e).context("opening the report file"),
                    )
                    .await;
            }
        };

        let mut reports = ReportState::default();
        let mut stop: Option<Stop> = None;
        let mut kill_at: Option<Instant> = None;
        let mut drain_deadline: Option<Instant> = None;
        let mut last_write = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let finished = loop {
            tokio::select! {
                r = work.wait() => break r,
                _ = tick.tick() => {}
            }
            if let Err(e) = tail.poll(&mut reports).await {
                tracing::warn!(error = %e, "reading the report file failed");
            }
            self.metrics
                .report_lines_rejected
                .inc_by(reports.take_rejected());

            if let Some(fresh) = lock(&self.cache).get(&name)
                && candidates::is_newer(fresh, &view)
            {
                view = fresh.clone();
            }
            let next = if !self.lease.held_since(self.claim_lapses) {
                // A stop under way keeps the ending it was going to write.
                let asked = match &stop {
                    Some(Stop::Cancel(ending)) => Some(ending.clone()),
                    Some(Stop::Drain) => Some(self.drained()),
                    _ => None,
                };
                Some(Stop::LeaseLost(asked))
            } else if candidates::fenced(
                &view,
                &writer.attempt.fence.agent,
                writer.attempt.fence.epoch,
            ) || lock(&self.cache).left(&name)
            {
                Some(Stop::Fenced)
            } else if let Some(ending) = decide::stop_requested(&view) {
                Some(Stop::Cancel(ending))
            } else {
                if self.draining() && drain_deadline.is_none() {
                    drain_deadline = Some(Instant::now() + self.cfg.drain);
                }
                drain_deadline
                    .filter(|d| Instant::now() >= *d)
                    .map(|_| Stop::Drain)
            };
            // The first reason to stop wins, except that (maybe) losing the item
            // overrides a cancel or drain in progress: the work must die now, and what
            // is written afterwards depends on it.
            if let Some(next) = next {
                let escalate = matches!(next, Stop::Fenced | Stop::LeaseLost(_))
                    && !matches!(stop, Some(Stop::Fenced | Stop::LeaseLost(_)));
                if stop.is_none() || escalate {
                    tracing::info!(item = %name, reason = ?next, "stopping the work");
                    // The pod's termination grace covers the drain and this grace
                    // (pool::template::termination_grace).
                    work.terminate();
                    kill_at = Some(
                        kill_at.map_or(Instant::now() + grace, |k| k.min(Instant::now() + grace)),
                    );
                    stop = Some(next);
                }
            }
            if kill_at.is_some_and(|k| Instant::now() >= k) {
                work.kill();
            }

            if stop.is_none() {
                let due = (reports.changed || reports.violation_pending)
                    && last_write.elapsed() >= self.cfg.progress_interval;
                let refresh =
                    last_write.elapsed() >= MEASURED_REFRESH.max(self.cfg.progress_interval);
                // A time budget just ran out: write the measurements now, so the
                // supervisor acts on it without waiting for the refresh.
                let wall = work.elapsed().as_secs_f64();
                let cpu = time_budget
                    .needs_cpu(wall, work.cpu_rate_bound())
                    .then(|| work.cpu_seconds_so_far());
                let over_time = time_budget.crossed(wall, cpu);
                if due || refresh || over_time {
                    last_write = Instant::now();
                    match self
                        .write_progress(&writer, &mut reports, &view, &work)
                        .await
                    {
                        Ok(Some(updated)) => {
                            let updated = candidates::slim(updated);
                            if candidates::is_newer(&updated, &view) {
                                view = updated;
                            }
                        }
                        Ok(None) => {}
                        Err(()) => {
                            tracing::info!(item = %name, "fenced out; stopping the work");
                            work.terminate();
                            kill_at = Some(Instant::now() + grace);
                            stop = Some(Stop::Fenced);
                        }
                    }
                }
            }
        };

        // The work container went away mid-item: its exit is unknown, and whatever
        // it was doing is over.
        let mut container_gone = false;
        let finished = match finished {
            Ok(f) => f,
            Err(WorkLost::ContainerGone) => {
                tracing::warn!(item = %name, "the work container went away while the item ran");
                container_gone = true;
                Finished {
                    exit: work::Exit::Signal(libc::SIGKILL),
                    cpu_seconds: work.cpu_seconds_so_far(),
                    wall_seconds: work.elapsed().as_secs_f64(),
                }
            }
            Err(WorkLost::Local(e)) => {
                // Should not happen (the wait thread always reports); treat the item as
                // lost rather than guess its outcome.
                tracing::error!(item = %name, error = %e, "lost track of the work command");
                work.kill();
                self.metrics.item(outcome::FENCED);
                return Handled::Done;
            }
        };
        self.metrics.work_duration.observe(finished.wall_seconds);
        if let Err(e) = tail.drain(&mut reports).await {
            tracing::warn!(error = %e, "reading the rest of the report file failed");
        }
        self.metrics
            .report_lines_rejected
            .inc_by(reports.take_rejected());
        let last_stderr = work.last_stderr_line();
        self.give_back_link(work);

        let (ending, result) = match stop {
            Some(Stop::Fenced) => {
                self.metrics.item(outcome::FENCED);
                tracing::warn!(item = %name, "the item was taken from this agent; abandoned it");
                return Handled::Done;
            }
            Some(Stop::LeaseLost(asked)) => {
                // Counted as LeaseLost whatever the hand-back meets: the metric says
                // how often agents lapse while holding work.
                self.metrics.item(outcome::LEASE_LOST);
                let ending = decide::lease_lost(asked, self.cfg.lease_duration);
                let measured = (finished.wall_seconds, finished.cpu_seconds);
                let written = self
                    .write_ending(&writer, &ending, None, &reports, Some(&view), measured)
                    .await;
                tracing::warn!(item = %name, outcome = ?ending.kind, reason = ?ending.reason, ?written,
                    "lease not renewed in time: stopped the work and handed the item back");
                return Handled::Done;
            }
            Some(Stop::Cancel(ending)) => (ending, None),
            Some(Stop::Drain) => (self.drained(), None),
            None if container_gone => (decide::work_container_gone(), None),
            None => decide::ending(finished.exit, &reports, &last_stderr),
        };
        tracing::info!(item = %name, outcome = ?ending.kind, reason = ?ending.reason, exit = ?finished.exit,
            wall = finished.wall_seconds, cpu = finished.cpu_seconds, "work finished");
        let measured = (finished.wall_seconds, finished.cpu_seconds);
        self.finish(&writer, &ending, result, &reports, Some(&view), measured)
            .await;
        Handled::Done
    }

    /// Starts the item's work: through the runner, or as a child of this process.
    async fn start_work(
        &mut self,
        key: &str,
        writer: &ItemWriter,
        payload: String,
        grace: Duration,
    ) -> Result<Running, Handled> {
        let attempt = writer.attempt.attempt;
        if let Some(slot) = self.runner.as_mut() {
            let Some(link) = slot.link.take() else {
                let ending = decide::work_container_gone();
                self.finish_unstarted(writer, &ending).await;
                return Err(Handled::Done);
            };
            let start = crate::runner::protocol::StartItem {
                item: key.to_owned(),
                attempt,
                payload,
                cancel_grace_seconds: grace.as_secs(),
            };
            return match link.start(start).await {
                Ok(work) => Ok(Running::Remote(work)),
                Err(StartError::Refused(link, error)) => {
                    slot.link = Some(link);
                    Err(self
                        .cannot_start(
                            writer,
                            anyhow::anyhow!("starting the work command: {error}"),
                        )
                        .await)
                }
                Err(StartError::Lost) => {
                    let ending = decide::work_container_gone();
                    self.finish_unstarted(writer, &ending).await;
                    Err(Handled::Done)
                }
            };
        }
        let dir = match ReportDir::create(key, attempt) {
            Ok(d) => d,
            Err(e) => {
                return Err(self
                    .cannot_start(
                        writer,
                        anyhow::Error::new(e).context("creating the report file"),
                    )
                    .await);
            }
        };
        let env = vec![
            ("TRIAD_ITEM".to_owned(), key.to_owned()),
            ("TRIAD_ATTEMPT".to_owned(), attempt.to_string()),
            ("TRIAD_PAYLOAD".to_owned(), payload.clone()),
            (
                "TRIAD_REPORT".to_owned(),
                dir.path.to_string_lossy().into_owned(),
            ),
        ];
        let mut stdin = payload.into_bytes();
        stdin.push(b'\n');
        match Work::spawn(Launch {
            command: &self.cfg.command,
            env,
            stdin,
            guarded: self.cfg.guard_work,
        }) {
            Ok(w) => Ok(Running::Local(w, dir)),
            Err(e) => Err(self
                .cannot_start(
                    writer,
                    anyhow::Error::new(e).context("starting the work command"),
                )
                .await),
        }
    }

    /// After an item: the runner link goes back for the next one (unless it broke).
    fn give_back_link(&mut self, work: Running) {
        if let (Running::Remote(w), Some(slot)) = (work, self.runner.as_mut()) {
            let link = w.finish();
            slot.link = link.is_open().then_some(link);
        }
    }

    /// Waits until the work container's runner answers (agent pods only). Not ready
    /// meanwhile: an agent that cannot run work must not look available.
    async fn ensure_runner(&mut self) -> bool {
        let Some(slot) = self.runner.as_mut() else {
            return true;
        };
        if slot.link.as_ref().is_some_and(RunnerLink::is_open) {
            return true;
        }
        slot.link = None;
        self.serve.set_ready(false);
        let mut drain = self.drain.clone();
        let stop = async move {
            while !*drain.borrow() {
                if drain.changed().await.is_err() {
                    return;
                }
            }
        };
        let link = RunnerLink::connect_until(&slot.socket, stop).await;
        let connected = link.is_some();
        slot.link = link;
        if connected {
            self.serve.set_ready(true);
        }
        connected
    }

    /// How an attempt ends that the agent stopped because it is draining.
    fn drained(&self) -> Ending {
        Ending::new(
            OutcomeKind::Released,
            "Drained",
            format!(
                "the agent was stopping and the work did not finish within {:?}",
                self.cfg.drain
            ),
        )
    }

    /// The work command cannot even start: give the item back (not the item's fault)
    /// and report the agent broken, so its pod restarts and the pool shows why.
    async fn cannot_start(&self, writer: &ItemWriter, err: anyhow::Error) -> Handled {
        let ending = Ending::new(OutcomeKind::Released, "StartFailed", format!("{err:#}"));
        self.finish_unstarted(writer, &ending).await;
        Handled::Broken(err)
    }

    /// Writes the ending of an attempt whose work never ran: nothing reported, nothing
    /// measured.
    async fn finish_unstarted(&self, writer: &ItemWriter, ending: &Ending) {
        self.finish(
            writer,
            ending,
            None,
            &ReportState::default(),
            None,
            (0.0, 0.0),
        )
        .await;
    }

    /// One progress/usage (and violation) write. `Err(())` means fenced out.
    async fn write_progress(
        &self,
        writer: &ItemWriter,
        reports: &mut ReportState,
        view: &WorkItem,
        work: &Running,
    ) -> Result<Option<WorkItem>, ()> {
        let now = crate::k8s::now();
        let usage = reports.monotonic_usage(usage_with_measured(
            &reports.usage,
            work.elapsed().as_secs_f64(),
            work.cpu_seconds_so_far(),
        ));
        let mut ops = progress_ops(reports.changed.then_some((&reports.progress, &now)), &usage);
        if reports.violation_pending
            && let Some(v) = &reports.violation
        {
            let conditions = view
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .filter(|c| !c.is_empty());
            ops.extend(violation_op(conditions, v, reports.violations, &now));
        }
        match tokio::time::timeout(WRITE_TIMEOUT, writer.send(ops)).await {
            Ok(Ok(item)) => {
                reports.changed = false;
                reports.violation_pending = false;
                Ok(Some(item))
            }
            Ok(Err(FenceError::Fenced)) => Err(()),
            Ok(Err(FenceError::Invalid(msg))) => {
                // Retrying the same content would be refused again; drop it.
                tracing::warn!(item = %writer.attempt.name, %msg, "progress write refused");
                reports.changed = false;
                reports.violation_pending = false;
                Ok(None)
            }
            Ok(Err(FenceError::Api(e))) => {
                tracing::warn!(item = %writer.attempt.name, error = %e, "progress write failed; will retry");
                Ok(None)
            }
            Err(_) => {
                tracing::warn!(item = %writer.attempt.name, "progress write timed out; will retry");
                Ok(None)
            }
        }
    }

    /// Writes how the attempt ended and counts it.
    async fn finish(
        &self,
        writer: &ItemWriter,
        ending: &Ending,
        result: Option<serde_json::Value>,
        reports: &ReportState,
        view: Option<&WorkItem>,
        measured: (f64, f64),
    ) {
        match self
            .write_ending(writer, ending, result, reports, view, measured)
            .await
        {
            Written::Accepted(kind) => self.metrics.item(kind_label(kind)),
            Written::Fenced | Written::GaveUp(decide::GiveUp::Moved) => {
                self.metrics.item(outcome::FENCED);
            }
            Written::GaveUp(decide::GiveUp::Draining) => {
                self.metrics.item(outcome::ABANDONED);
            }
            Written::Refused => {}
        }
    }

    /// Writes how the attempt ended, under the fence, until it is accepted, refused, or
    /// `decide::give_up_writing` says to stop. Transient errors are retried with a
    /// bounded backoff also after the lease lapsed (an API server outage lapses it):
    /// the fence's `test` ops let the write land only while the claim is still ours,
    /// so nobody else can be running this attempt, and a supervisor that fenced us out
    /// first makes it fail harmlessly.
    async fn write_ending(
        &self,
        writer: &ItemWriter,
        ending: &Ending,
        result: Option<serde_json::Value>,
        reports: &ReportState,
        view: Option<&WorkItem>,
        (wall, cpu): (f64, f64),
    ) -> Written {
        let name = writer.attempt.name.as_str();
        let usage = reports.not_below_written(usage_with_measured(&reports.usage, wall, cpu));
        let now = crate::k8s::now();
        let progress = (reports.progress != Default::default())
            .then(|| progress_value(&reports.progress, &now));
        // A violation reported since the last progress write goes out with the outcome.
        let violation = reports
            .violation
            .as_ref()
            .filter(|_| reports.violation_pending)
            .and_then(|v| {
                let conditions = view
                    .and_then(|v| v.status.as_ref())
                    .map(|s| s.conditions.as_slice())
                    .filter(|c| !c.is_empty());
                violation_op(conditions, v, reports.violations, &now)
            });
        let mut ending = ending.clone();
        let mut result = result;
        let mut drain = self.drain.clone();
        let mut drain_open = true;
        let mut drain_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(500);
        let mut next_try = Instant::now();
        loop {
            // Between tries, wake for watch events and the drain signal too, so a
            // fence-out seen by the watch ends the retrying at once.
            loop {
                if self.draining() {
                    drain_since.get_or_insert_with(Instant::now);
                }
                let give_up = {
                    let cache = lock(&self.cache);
                    decide::give_up_writing(
                        cache.get(name),
                        cache.left(name),
                        &writer.attempt.fence,
                        drain_since.map(|t| t.elapsed()),
                    )
                };
                if let Some(why) = give_up {
                    tracing::warn!(item = %name, outcome = ?ending.kind, reason = ?why, "stopped trying to write the outcome");
                    return Written::GaveUp(why);
                }
                if Instant::now() >= next_try {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next_try.into()) => {}
                    _ = self.changed.notified() => {}
                    r = drain.changed(), if drain_open && drain_since.is_none() => {
                        drain_open = r.is_ok();
                    }
                }
            }
            let mut ops = ending_ops(
                &writer.attempt,
                &ending,
                result.clone(),
                &usage,
                progress.clone(),
                &now,
            );
            if let Some(v) = &violation {
                // First, so the completion's phase stays the last op.
                ops.insert(0, v.clone());
            }
            match tokio::time::timeout(WRITE_TIMEOUT, writer.send(ops)).await {
                Ok(Ok(_)) => return Written::Accepted(ending.kind),
                Ok(Err(FenceError::Fenced)) => {
                    tracing::warn!(item = %name, outcome = ?ending.kind, "outcome refused by the fence: the item is no longer ours");
                    return Written::Fenced;
                }
                Ok(Err(FenceError::Invalid(msg))) if ending.kind == OutcomeKind::Succeeded => {
                    // The API server refused what the command produced (for example a
                    // result it cannot store): say so on the item instead.
                    tracing::warn!(item = %name, %msg, "completion refused; recording the failure");
                    ending = Ending::new(
                        OutcomeKind::FailedPermanently,
                        "StatusRejected",
                        crate::agent::report::cut(&msg, 1024),
                    );
                    result = None;
                }
                Ok(Err(FenceError::Invalid(msg))) => {
                    tracing::error!(item = %name, %msg, outcome = ?ending.kind, "outcome refused by the API server");
                    return Written::Refused;
                }
                Ok(Err(FenceError::Api(e))) => {
                    tracing::warn!(item = %name, error = %e, retry_in = ?backoff, "writing the outcome failed; retrying");
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(_) => {
                    tracing::warn!(item = %name, "writing the outcome timed out; retrying");
                }
            }
        }
    }
}

/// The `outcome` label of an accepted outcome; each is in `metrics::outcome::ALL`.
fn kind_label(kind: OutcomeKind) -> &'static str {
    match kind {
        OutcomeKind::Succeeded => "Succeeded",
        OutcomeKind::Failed => "Failed",
        OutcomeKind::FailedPermanently => "FailedPermanently",
        OutcomeKind::Cancelled => "Cancelled",
        OutcomeKind::LeaseExpired => "LeaseExpired",
        OutcomeKind::Released => "Released",
    }
}
