//! Leader failover on the real control plane: for each role, two `triad controller`
//! processes contend for its Lease (`--leader-elect`, Leases in the test's namespace);
//! the test SIGKILLs the holder while work is in flight and checks that the standby
//! takes over within the bound below, that the work carries on, and that no write was
//! made by two leaders.
//!
//! Who wrote what: all replicas of a role share one field manager, but each reports
//! its Events with its own `reportingInstance` (its identity), so the Events show which
//! process acted and when.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use triad::api::{AgentPool, Phase, WorkItem, WorkQueue};

use crate::agent::{Agent, Scratch, create as create_item, free_port, scratch};
use crate::pool::{create_pool, live_pods, wait_pods};
use crate::support::{Role, TestNamespace, create, start_role, wait_for};

/// The lease the contenders use: short, to keep the tests quick.
const LEASE_SECONDS: u64 = 4;

/// How long after the leader's death the standby must hold the Lease. The dead leader
/// renewed last at or before its death, so its lease lapses at most LEASE after it;
/// the standby tries once per retry period (a quarter of the lease, `run_election`),
/// so its first try after the lapse comes at most one retry period later; a second
/// covers the two API requests of that try (get, then a replace).
const TAKEOVER: Duration =
    Duration::from_millis(LEASE_SECONDS * 1000 + LEASE_SECONDS * 1000 / 4 + 1000);

const FLOW: Duration = Duration::from_secs(120);

/// Two `triad controller` processes contending for one role.
struct Contenders {
    role: &'static str,
    procs: Vec<Agent>,
}

/// What a failover left: who led, who leads now, and when.
struct Failover {
    killed: String,
    standby: String,
    /// Just before the SIGKILL.
    killed_at: jiff::Timestamp,
    /// The standby's `acquireTime` on the Lease.
    acquired_at: jiff::Timestamp,
}

impl Contenders {
    /// Starts `<role>-a` and `<role>-b`, each running only `role`, watching only the
    /// test's namespace and electing through Leases there; returns once one leads.
    async fn start(ns: &TestNamespace, dir: &Path, role: &'static str) -> Self {
        let mut procs = Vec::new();
        for id in ["a", "b"] {
            let name = format!("{role}-{id}");
            let port = free_port();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_triad"));
            cmd.args(["controller", "--leader-elect", "--roles", role])
                .args(["--namespace", &ns.name, "--lease-namespace", &ns.name])
                .args(["--identity", &name])
                .args(["--leader-lease-seconds", &LEASE_SECONDS.to_string()])
                .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
                // The Events' reportingInstance.
                .env("POD_NAME", &name)
                .env("TRIAD_AGENT_CLUSTER_ROLE", "triad-agent");
            procs.push(Agent::spawn(dir, &name, port, cmd));
        }
        for p in &mut procs {
            p.wait_ready().await;
        }
        let me = Self { role, procs };
        let leader = wait_for(Duration::from_secs(30), &format!("a {role} leader"), || {
            me.holder(ns)
        })
        .await;
        // The gauge agrees with the Lease: 1 on the holder, 0 on the standby.
        for p in &me.procs {
            let want = if p.name() == leader { 1.0 } else { 0.0 };
            wait_for(
                Duration::from_secs(10),
                &format!("triad_leader {want} on {}", p.name()),
                || async { (me.leading(p).await == want).then_some(()) },
            )
            .await;
        }
        me
    }

    async fn holder(&self, ns: &TestNamespace) -> Option<String> {
        let lease = ns
            .api::<Lease>()
            .get_opt(&format!("triad-{}", self.role))
            .await
            .ok()??;
        let holder = lease.spec?.holder_identity?;
        self.procs
            .iter()
            .any(|p| p.name() == holder)
            .then_some(holder)
    }

    async fn leading(&self, p: &Agent) -> f64 {
        p.metric(&format!("triad_leader{{role=\"{}\"}}", self.role))
            .await
    }

    /// SIGKILLs the holder and waits (at most [`TAKEOVER`]) for the standby to hold
    /// the Lease and say so in its `triad_leader` gauge.
    async fn kill_leader(&mut self, ns: &TestNamespace) -> Failover {
        self.depose(ns, libc::SIGKILL).await
    }

    /// [`Self::kill_leader`] with `signal`: SIGKILL, or SIGSTOP to pause the leader
    /// (see [`Self::resume`]).
    async fn depose(&mut self, ns: &TestNamespace, signal: i32) -> Failover {
        let leader = self.holder(ns).await.expect("a leader");
        let (dead, standby) = match self.procs.iter().position(|p| p.name() == leader) {
            Some(0) => (0, 1),
            _ => (1, 0),
        };
        let killed_at = jiff::Timestamp::now();
        let clock = Instant::now();
        self.procs[dead].signal(signal);
        let standby_name = self.procs[standby].name().to_owned();
        let lease = wait_for(
            TAKEOVER,
            &format!("{standby_name} to hold the {} lease", self.role),
            || async {
                let lease = ns
                    .api::<Lease>()
                    .get(&format!("triad-{}", self.role))
                    .await
                    .ok()?;
                let spec = lease.spec.as_ref()?;
                (spec.holder_identity.as_deref() == Some(standby_name.as_str())).then_some(lease)
            },
        )
        .await;
        eprintln!(
            "{} failover: {standby_name} holds the lease {:?} after {leader} was killed",
            self.role,
            clock.elapsed()
        );
        let spec = lease.spec.expect("spec");
        assert!(
            spec.lease_transitions.unwrap_or(0) >= 1,
            "a takeover is a transition"
        );
        let acquired_at = spec.acquire_time.expect("acquireTime").0;
        if signal == libc::SIGKILL {
            let status = self.procs[dead].wait_exit(Duration::from_secs(5)).await;
            assert!(!status.success(), "{leader} was killed: {status}");
        }
        let p = &self.procs[standby];
        wait_for(
            Duration::from_secs(5),
            &format!("triad_leader 1 on {standby_name}"),
            || async { (self.leading(p).await == 1.0).then_some(()) },
        )
        .await;
        Failover {
            killed: leader,
            standby: standby_name,
            killed_at,
            acquired_at,
        }
    }
}

impl Contenders {
    /// Lets the paused old leader `f.killed` run again: it must find that it lost the
    /// Lease and exit (its next renewal, within a retry period, finds another holder).
    async fn resume(&mut self, f: &Failover) {
        let old = self
            .procs
            .iter_mut()
            .find(|p| p.name() == f.killed)
            .expect("the old leader");
        old.signal(libc::SIGCONT);
        let status = old.wait_exit(TAKEOVER).await;
        assert!(
            !status.success(),
            "{} stops on losing the lease: {status}",
            f.killed
        );
    }
}

/// Events the role's controller (`reportingController`) published in the namespace.
async fn events_of(ns: &TestNamespace, controller: &str) -> Vec<Event> {
    ns.api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some(controller))
        .collect()
}

fn instance(e: &Event) -> &str {
    e.reporting_instance.as_deref().unwrap_or("")
}

/// When the Event was first and last reported.
fn reported(e: &Event) -> (jiff::Timestamp, jiff::Timestamp) {
    let first = e.event_time.as_ref().expect("eventTime").0;
    let last = e.series.as_ref().map_or(first, |s| s.last_observed_time.0);
    (first, last)
}

/// One leader at a time, as the Events tell it: the standby published nothing before it
/// acquired the Lease, and the killed leader nothing after its death.
async fn assert_one_writer(ns: &TestNamespace, controller: &str, f: &Failover) {
    for e in events_of(ns, controller).await {
        let (first, last) = reported(&e);
        let about = format!(
            "{} {:?} on {:?}: {:?}",
            instance(&e),
            e.reason,
            e.regarding.as_ref().and_then(|r| r.name.clone()),
            e.note
        );
        if instance(&e) == f.standby {
            assert!(
                first >= f.acquired_at,
                "the standby wrote at {first} before it led (from {}): {about}",
                f.acquired_at
            );
        } else {
            assert_eq!(instance(&e), f.killed, "an unknown writer: {about}");
            assert!(
                last <= f.killed_at,
                "the killed leader wrote at {last}, after its death at {}: {about}",
                f.killed_at
            );
        }
    }
}

/// `<item> <attempt>` lines the work commands wrote, per item.
fn runs(log: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some((item, attempt)) = line.split_once(' ') {
            let name = item.rsplit('/').next().unwrap_or(item).to_owned();
            runs.entry(name).or_default().push(attempt.to_owned());
        }
    }
    runs
}

/// Two host agents on queue `q` whose work logs `<item> <attempt>` to `ran.log` in
/// `dir`, then runs `then`.
async fn start_agents(ns: &TestNamespace, dir: &Scratch, then: &str) -> Vec<Agent> {
    let ran = dir.join("ran.log").to_string_lossy().into_owned();
    let script = format!(r#"echo "$TRIAD_ITEM $TRIAD_ATTEMPT" >> "$RAN_LOG"; {then}"#);
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| {
            Agent::start(
                ns,
                dir,
                &format!("agent-{i}"),
                &[("RAN_LOG", &ran)],
                &["sh", "-c", &script],
            )
        })
        .collect();
    for a in &mut agents {
        a.wait_ready().await;
    }
    agents
}

/// Creates `<prefix>-<i>` for i in 0..n on queue `q`.
async fn create_items(ns: &TestNamespace, prefix: &str, n: usize) {
    let api: Api<WorkItem> = ns.api();
    for i in 0..n {
        create_item(&api, &format!("{prefix}-{i}"), json!({})).await;
    }
}

/// Waits until all `n` items in the namespace are Succeeded.
async fn all_succeeded(ns: &TestNamespace, n: usize) -> Vec<WorkItem> {
    let api: Api<WorkItem> = ns.api();
    wait_for(FLOW, &format!("all {n} items Succeeded"), || async {
        let items = api.list(&ListParams::default()).await.ok()?.items;
        (items.len() == n && items.iter().all(|i| i.phase() == Some(Phase::Succeeded)))
            .then_some(items)
    })
    .await
}

/// Every item ran exactly twice, attempts 1 and 2, ended on attempt 2, and was
/// completed once: the agents' accepted completions add up to the items.
async fn assert_each_item_retried_once(items: &[WorkItem], dir: &Path, agents: &[Agent]) {
    let runs = runs(&dir.join("ran.log"));
    for wi in items {
        let name = wi.name_any();
        assert_eq!(
            runs.get(&name).map(Vec::as_slice),
            Some(&["1".to_owned(), "2".to_owned()][..]),
            "{name} ran once per attempt: {runs:?}"
        );
        assert_eq!(wi.status.as_ref().map(|s| s.attempt), Some(2), "{name}");
    }
    // An agent counts a completion once its write is back, a moment after the item
    // reads Succeeded.
    let completions = wait_for(Duration::from_secs(10), "completions counted", || async {
        let mut sum = 0.0;
        for a in agents {
            sum += a
                .metric("triad_agent_items_total{outcome=\"Succeeded\"}")
                .await;
        }
        (sum >= items.len() as f64).then_some(sum)
    })
    .await;
    assert_eq!(completions, items.len() as f64, "one completion per item");
}

/// Per object, the instances that reported `reason` about it: never two.
async fn assert_one_reporter_per_object(ns: &TestNamespace, controller: &str, reason: &str) {
    let mut by_object: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in events_of(ns, controller).await {
        if e.reason.as_deref() == Some(reason) {
            let name = e.regarding.as_ref().and_then(|r| r.name.clone());
            by_object
                .entry(name.unwrap_or_default())
                .or_default()
                .insert(instance(&e).to_owned());
        }
    }
    for (name, instances) in &by_object {
        assert_eq!(instances.len(), 1, "{reason} on {name} by {instances:?}");
    }
}

/// Two scheduler contenders and two agents whose items fail their first attempt and
/// succeed on the second; eight items `before-<i>`, three of them past a first attempt.
async fn scheduler_contest(ns: &TestNamespace, dir: &Scratch) -> (Contenders, Vec<Agent>) {
    create::<WorkQueue>(
        ns,
        json!({"metadata": {"name": "q"}, "spec": {"retry": {"backoff":
            {"baseSeconds": 0.5, "maxSeconds": 1, "jitterPercent": 0}}}}),
    )
    .await;
    let contenders = Contenders::start(ns, dir, "scheduler").await;
    let agents = start_agents(ns, dir, r#"sleep 0.2; [ "$TRIAD_ATTEMPT" -ge 2 ]"#).await;
    create_items(ns, "before", 8).await;
    wait_for(FLOW, "three first attempts ran", || async {
        (runs(&dir.join("ran.log")).len() >= 3).then_some(())
    })
    .await;
    (contenders, agents)
}

/// The scheduler turns a failed attempt into a retry; only the leader may. Items fail
/// their first attempt and succeed on the second, so none finishes without a scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_failover_keeps_retries_flowing_with_one_writer() {
    let ns = TestNamespace::new("leader-sched").await;
    let dir = scratch(&ns);
    // In flight: first attempts have failed and are being retried.
    let (mut contenders, agents) = scheduler_contest(&ns, &dir).await;
    let failover = contenders.kill_leader(&ns).await;
    create_items(&ns, "after", 8).await;

    let items = all_succeeded(&ns, 16).await;
    assert_each_item_retried_once(&items, &dir, &agents).await;
    assert_one_writer(&ns, "triad-scheduler", &failover).await;
    assert_one_reporter_per_object(&ns, "triad-scheduler", "Retrying").await;
    // The items created after the kill were retried by the new leader.
    let retried_by_standby = events_of(&ns, "triad-scheduler")
        .await
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Retrying") && instance(e) == failover.standby)
        .count();
    assert!(retried_by_standby >= 8, "{retried_by_standby}");
}

/// The leader is paused (SIGSTOP) rather than killed, so it resumes after the standby
/// took over, still believing it leads: the case where two processes could both act
/// as leader. Its term ran out while it was paused, so no new reconcile passes its gate,
/// and it exits once its election finds the new holder.
///
/// A write already past the gate when the pause began may still land after the resume
/// (any leader election without a fencing token allows that). It cannot conflict: every
/// scheduler status write is a compare-and-swap on the resourceVersion it read, so it is
/// accepted only if the new leader has not written the item since. What is asserted is
/// what a user relies on: each item retried exactly once and finished once, and no
/// retry announced by both processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_scheduler_leader_resumes_without_a_conflicting_write() {
    let ns = TestNamespace::new("leader-pause").await;
    let dir = scratch(&ns);
    let (mut contenders, agents) = scheduler_contest(&ns, &dir).await;
    let paused = contenders.depose(&ns, libc::SIGSTOP).await;
    // Work the paused leader will hear of when it resumes: its watch delivers these
    // failed attempts at once, the same versions the new leader acts on.
    create_items(&ns, "after", 8).await;
    wait_for(FLOW, "first attempts of the later items", || async {
        let runs = runs(&dir.join("ran.log"));
        (runs.keys().filter(|k| k.starts_with("after-")).count() >= 4).then_some(())
    })
    .await;
    contenders.resume(&paused).await;

    let items = all_succeeded(&ns, 16).await;
    assert_each_item_retried_once(&items, &dir, &agents).await;
    assert_one_reporter_per_object(&ns, "triad-scheduler", "Retrying").await;
}

/// The pool controller keeps a pool's agent pods at its replicas; only the leader
/// creates them. A pod deleted just before the leader dies is replaced once, and a scale
/// change after the kill is honoured, with no pod created twice over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_failover_replaces_and_scales_agents_exactly_once() {
    let ns = TestNamespace::new("leader-pools").await;
    let dir = scratch(&ns);
    // Every agent pod the pool ever had, from a watch that runs the whole test.
    let created: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let seen = created.clone();
    let pods = watcher(
        ns.api::<Pod>(),
        watcher::Config::default().labels("triad.dev/pool=workers"),
    )
    .applied_objects();
    let _watch = tokio::spawn(pods.for_each(move |pod| {
        if let Ok(pod) = pod {
            seen.lock().expect("lock").insert(pod.name_any());
        }
        std::future::ready(())
    }));
    let mut contenders = Contenders::start(&ns, &dir, "pools").await;
    create_pool(&ns, "workers", json!({"replicas": 2})).await;
    let pods = wait_pods(&ns, "workers", 2).await;

    // In flight: the leader has a pod to replace when it dies.
    let gone = pods[0].name_any();
    ns.api::<Pod>()
        .delete(&gone, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete an agent pod");
    let failover = contenders.kill_leader(&ns).await;
    wait_for(FLOW, "the deleted agent pod replaced", || async {
        let pods = live_pods(&ns, "workers").await;
        (pods.len() == 2 && pods.iter().all(|p| p.name_any() != gone)).then_some(())
    })
    .await;
    let out = ns.kubectl(&["scale", "ap/workers", "--replicas=3"]);
    assert!(out.status.success(), "{out:?}");
    wait_pods(&ns, "workers", 3).await;
    let pools: Api<AgentPool> = ns.api();
    wait_for(FLOW, "the pool's status at 3 agents", || async {
        let pool = pools.get("workers").await.ok()?;
        let status = pool.status.as_ref()?;
        (status.replicas == 3 && status.observed_generation == pool.metadata.generation)
            .then_some(())
    })
    .await;

    // Two at first, one replacement, one more for the scale: four pods, not one more.
    let ever = created.lock().expect("lock").clone();
    assert_eq!(ever.len(), 4, "agent pods ever created: {ever:?}");
    assert_one_writer(&ns, "triad-pools", &failover).await;
    // Each pod was created by one instance: named in one SuccessfulCreate Event.
    let mut creators: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events_of(&ns, "triad-pools").await {
        if e.reason.as_deref() == Some("SuccessfulCreate") {
            for pod in &ever {
                if e.note.as_deref().is_some_and(|n| n.contains(pod.as_str())) {
                    creators
                        .entry(pod.clone())
                        .or_default()
                        .push(instance(&e).to_owned());
                }
            }
        }
    }
    for (pod, by) in &creators {
        assert_eq!(by.len(), 1, "{pod} created by {by:?}");
    }
}

/// Only the supervisor stops an attempt past its timeout. First attempts hang until it
/// does; second attempts succeed. The attempts due when the leader dies, and those of
/// items created after, are stopped by the new leader, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_failover_keeps_timeouts_enforced_with_one_writer() {
    let ns = TestNamespace::new("leader-sup").await;
    let dir = scratch(&ns);
    let _scheduler = start_role(&ns, Role::Scheduler);
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {
            "timeouts": {"attemptSeconds": 2},
            "supervision": {"cancelGraceSeconds": 1},
            "retry": {"backoff": {"baseSeconds": 0.5, "maxSeconds": 1, "jitterPercent": 0}}}}),
    )
    .await;
    let mut contenders = Contenders::start(&ns, &dir, "supervisor").await;
    let agents = start_agents(
        &ns,
        &dir,
        r#"if [ "$TRIAD_ATTEMPT" = 1 ]; then exec sleep 600; fi"#,
    )
    .await;
    create_items(&ns, "before", 4).await;
    // In flight: two first attempts are running, their timeouts not yet due.
    wait_for(FLOW, "two first attempts running", || async {
        (runs(&dir.join("ran.log")).len() >= 2).then_some(())
    })
    .await;
    let failover = contenders.kill_leader(&ns).await;
    create_items(&ns, "after", 4).await;

    let items = all_succeeded(&ns, 8).await;
    assert_each_item_retried_once(&items, &dir, &agents).await;
    for wi in &items {
        let stops: Vec<_> = wi
            .status
            .as_ref()
            .map(|s| s.interventions.clone())
            .unwrap_or_default();
        let timeouts = stops
            .iter()
            .filter(|i| i.reason == "AttemptTimeout" && i.action == "CancelRequested")
            .count();
        assert_eq!(timeouts, 1, "{}: {stops:?}", wi.name_any());
    }
    assert_one_writer(&ns, "triad-supervisor", &failover).await;
    assert_one_reporter_per_object(&ns, "triad-supervisor", "AttemptTimeout").await;
}

/// A leader stopped with SIGTERM (a rollout, a scale-down) hands its Lease over on the
/// way out: the Lease is seen with no holder before the standby takes it, so the standby
/// need not wait out a lease duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_releases_its_lease() {
    let ns = TestNamespace::new("leader-term").await;
    let dir = scratch(&ns);
    let mut contenders = Contenders::start(&ns, &dir, "pools").await;
    // Every holder the Lease had, in order, from a watch that runs across the handover.
    let holders: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = holders.clone();
    let leases = watcher(
        ns.api::<Lease>(),
        watcher::Config::default().fields("metadata.name=triad-pools"),
    )
    .applied_objects();
    let _watch = tokio::spawn(leases.for_each(move |lease| {
        if let Ok(lease) = lease {
            let holder = lease.spec.and_then(|s| s.holder_identity);
            let mut seen = seen.lock().expect("lock");
            if seen.last() != Some(&holder) {
                seen.push(holder);
            }
        }
        std::future::ready(())
    }));
    wait_for(
        Duration::from_secs(10),
        "the watch to see the leader",
        || async { (!holders.lock().expect("lock").is_empty()).then_some(()) },
    )
    .await;
    let f = contenders.depose(&ns, libc::SIGTERM).await;
    let seen = wait_for(
        Duration::from_secs(10),
        "the watch to see the standby",
        || async {
            let seen = holders.lock().expect("lock").clone();
            seen.contains(&Some(f.standby.clone())).then_some(seen)
        },
    )
    .await;
    let released = seen.windows(3).any(|w| {
        w[0].as_deref() == Some(&f.killed) && w[1].is_none() && w[2].as_deref() == Some(&f.standby)
    });
    assert!(released, "holders seen: {seen:?}");
}
