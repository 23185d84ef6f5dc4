//! The candidate set: a compact cache of the claimable items on the agent's queues,
//! fed by field-selected watches, and the choice of what to try to claim next.
//!
//! The watches are chosen so that an agent hears about an item only while it may claim
//! it. Per queue there are two, `spec.queue=<q>` and `status.queue=<q>` (the
//! scheduler's routing writes `status.queue`, which overrides `spec.queue`), both
//! limited to items not in a phase that rules a claim out, so a claimed item leaves them
//! with one event and its progress, usage and ending are never sent to the other agents.
//! A third watch, `status.claim.agent=<me>,status.phase=Running`, follows what this
//! agent holds: a cancel, or the item leaving it (fenced out, reclaimed). The agents
//! that share a queue learn of each other from their Leases, which name the queues they
//! serve. Each item watch keeps its own store so a relist replaces exactly what that
//! watch saw; readers merge the stores by name, newest resourceVersion first.
//!
//! The agent keeps only what a claim needs: for a claimable item, a 64-byte [`Waiting`]
//! record. Only the item this agent holds is kept whole (slimmed), for the fence and
//! cancel checks. So a queue of 50 000 items costs a few MB, and the full item arrives
//! only in the claim's response.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use rand::Rng;
use tokio::sync::Notify;

use super::config::QueueWeight;
use crate::api::{
    CPU_SECONDS, Claim, Counters, Phase, WALL_SECONDS, WorkItem, WorkItemSpec, WorkItemStatus,
    WorkQueue,
};
use crate::core::{ordering, phase, ts};
use crate::k8s::lease::{AGENT_LEASE_SELECTOR, AGENT_QUEUES_ANNOTATION};

/// What the agent needs to know about one of its WorkQueues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    pub max_in_flight: Option<i32>,
    pub aging_seconds: i64,
    /// `spec.supervision.cancelGraceSeconds`: SIGTERM to SIGKILL when stopping work.
    pub cancel_grace_seconds: i64,
}

impl QueueInfo {
    fn of(q: &WorkQueue) -> Self {
        QueueInfo {
            max_in_flight: q.spec.max_in_flight,
            aging_seconds: q.spec.aging_seconds,
            cancel_grace_seconds: q.spec.supervision.cancel_grace_seconds,
        }
    }
}

/// Without a WorkQueue object the agent assumes the queue's defaults: no in-flight
/// limit and aging one point per second.
const DEFAULT_QUEUE: QueueInfo = QueueInfo {
    max_in_flight: None,
    aging_seconds: 1,
    cancel_grace_seconds: 10,
};

/// Longest condition message kept in the held item's view; only types, reasons and
/// the attempt tag matter there.
const MAX_CONDITION_MESSAGE: usize = 256;

/// A peer whose Lease has not been renewed for this many of its durations is presumed
/// gone (one missed renewal and some watch delay are normal).
const PEER_LEASE_GRACE: u32 = 2;

/// Most candidates one pick hands the run loop.
const READY_PER_PICK: usize = 4;

/// Strips everything the fence and cancel checks of a held item do not read.
pub fn slim(mut item: WorkItem) -> WorkItem {
    let meta = &mut item.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    item.spec.payload = None;
    item.spec.budget.clear();
    // Only "has dependencies" matters for claimability.
    item.spec.depends_on.truncate(1);
    if let Some(s) = item.status.as_mut() {
        s.waiting = None;
        s.progress = None;
        s.usage.clear();
        s.budget_extension.clear();
        s.result = None;
        s.outcome = None;
        s.last_error = None;
        s.attempts.clear();
        s.interventions.clear();
        s.started_at = None;
        s.finished_at = None;
        for c in &mut s.conditions {
            if c.message.len() > MAX_CONDITION_MESSAGE {
                c.message = super::report::cut(&c.message, MAX_CONDITION_MESSAGE);
            }
        }
    }
    item
}

/// Milliseconds since the Unix epoch: half the size of a `Timestamp`, and precise
/// enough for claim windows and aging.
type Millis = i64;

fn millis(t: Timestamp) -> Millis {
    t.as_millisecond()
}

fn timestamp(ms: Millis) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// An item that may be claimable, as much of it as choosing and claiming need: 64
/// bytes, so that 50 000 queued items cost a few MB.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    /// The API server's resourceVersions of custom resources are etcd revisions.
    resource_version: u64,
    queued_since: Millis,
    /// The claim window; `Millis::MIN` and `Millis::MAX` when open.
    from: Millis,
    until: Millis,
    epoch: i64,
    priority: i32,
    attempt: i32,
    /// Creation second since the Unix epoch (creation times have one-second grain).
    created: u32,
    /// How far `resource_version` has moved since this agent first saw the item
    /// claimable: the queue's storage order within a creation second is the revision
    /// first seen ([`Waiting::order_revision`]), so a status write while the item waits
    /// (the scheduler's Queued, "position N") does not move it back. 32 bits keep the
    /// record at 64 bytes; it saturates after 4 billion cluster writes.
    moved: u32,
    /// When this agent first saw it claimable, in ms after the cache started: claim
    /// latency, and the start of the time it leaves the item to the agents that prefer
    /// it more.
    seen: u32,
    /// Index of its queue in the agent's queue list.
    queue: u16,
    /// Fast path without status: on a queue with maxInFlight the scheduler must admit
    /// it first.
    unadmitted: bool,
}

impl Waiting {
    /// The revision at which this agent first saw the item claimable.
    fn order_revision(&self) -> u64 {
        self.resource_version - u64::from(self.moved)
    }
}

/// Which of a queue's two watches a store is fed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    /// `spec.queue=<q>`: items that name the queue themselves.
    Spec,
    /// `status.queue=<q>`: items the scheduler routed or admitted to the queue.
    Status,
}

/// The record for `item` seen in a watch of kind `stream` by an agent serving `queues`,
/// or None when the agent has no use for it (not on its queues, not claimable in its
/// state). An item with `status.queue` is kept only by that queue's status watch, so an
/// admitted item costs one record, not two.
fn waiting_of(
    item: &WorkItem,
    stream: Stream,
    queues: &[QueueWeight],
    seen: u32,
    first_revision: Option<u64>,
) -> Option<Waiting> {
    let resource_version: u64 = item.metadata.resource_version.as_deref()?.parse().ok()?;
    let status = item.status.as_ref();
    if stream == Stream::Spec && status.is_some_and(|s| s.queue.is_some()) {
        return None;
    }
    let queue = item.effective_queue()?;
    let qi = queues.iter().position(|q| q.name == queue)?;
    let window = phase::claim_window(item)?;
    let created = ts(item.metadata.creation_timestamp.as_ref()).unwrap_or(Timestamp::UNIX_EPOCH);
    let moved = resource_version.saturating_sub(first_revision.unwrap_or(resource_version));
    Some(Waiting {
        resource_version,
        created: u32::try_from(created.as_second().max(0)).unwrap_or(u32::MAX),
        moved: u32::try_from(moved).unwrap_or(u32::MAX),
        queued_since: millis(ordering::queued_since(item).unwrap_or(created)),
        from: window.from.map_or(Millis::MIN, millis),
        until: window.until.map_or(Millis::MAX, millis),
        epoch: item.epoch(),
        priority: item.effective_priority(),
        attempt: status.map_or(0, |s| s.attempt),
        seen,
        queue: u16::try_from(qi).ok()?,
        unadmitted: item.phase().is_none(),
    })
}

/// Whether a waiting item may be claimed from its queue now. On a queue with
/// `maxInFlight` an item without status is not claimable: the scheduler admits such
/// items (phase Queued) only while the queue has room, so agents never need to count
/// what runs.
fn claimable_now(w: &Waiting, info: &QueueInfo, now: Millis) -> bool {
    !(info.max_in_flight.is_some() && w.unadmitted) && w.from <= now && now < w.until
}

/// The field selector of a claimable-items watch on `field=<queue>`: every phase but
/// Queued is excluded (an item without a phase, the fast path, has an empty one and
/// passes).
pub fn claimable_selector(field: &str, queue: &str) -> String {
    let mut selector = format!("{field}={queue}");
    for p in Phase::ALL.iter().filter(|p| **p != Phase::Queued) {
        selector.push_str(",status.phase!=");
        selector.push_str(p.as_str());
    }
    selector
}

/// The field selector of the watch of what `agent` holds.
pub fn held_selector(agent: &str) -> String {
    format!("status.claim.agent={agent},status.phase=Running")
}

/// resourceVersions are opaque, but the API server's are etcd revisions: compare them
/// as numbers when they are, else treat the later-seen one as newer.
pub fn newer_version(candidate: Option<&str>, than: Option<&str>) -> bool {
    let num = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok());
    match (num(candidate), num(than)) {
        (Some(a), Some(b)) => a > b,
        _ => candidate != than,
    }
}

pub fn is_newer(candidate: &WorkItem, than: &WorkItem) -> bool {
    newer_version(
        candidate.metadata.resource_version.as_deref(),
        than.metadata.resource_version.as_deref(),
    )
}

fn revision(item: &WorkItem) -> Option<u64> {
    item.metadata.resource_version.as_deref()?.parse().ok()
}

struct Store {
    stream: Stream,
    items: HashMap<Box<str>, Waiting>,
    /// Objects of a relist in progress; swapped in at InitDone.
    relist: Option<HashMap<Box<str>, Waiting>>,
    synced: bool,
}

impl Store {
    fn new(stream: Stream) -> Self {
        Store {
            stream,
            items: HashMap::new(),
            relist: None,
            synced: false,
        }
    }

    /// When the store first saw `name` claimable, and at which revision.
    fn first_seen(&self, name: &str) -> Option<(u32, u64)> {
        let from =
            |m: &HashMap<Box<str>, Waiting>| m.get(name).map(|w| (w.seen, w.order_revision()));
        from(&self.items).or_else(|| self.relist.as_ref().and_then(from))
    }
}

/// Another agent serving one of our queues, as its Lease shows it.
#[derive(Clone, Copy, Debug)]
struct Peer {
    /// When we last saw its Lease renewed (our clock).
    renewed: Instant,
    duration: Duration,
}

impl Peer {
    fn alive(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.renewed) < self.duration * PEER_LEASE_GRACE
    }
}

/// The item this agent is claiming or holds.
struct Held {
    name: String,
    /// Its freshest slim view from the held-items watch.
    view: Option<WorkItem>,
    /// The resourceVersion our claim created, once the claim returned.
    claimed: Option<u64>,
    /// The newest resourceVersion with which it left the held-items watch.
    left: Option<u64>,
}

/// Our latest claim, until the claimable-items watch shows the item gone: how far
/// behind the API server the agents' caches run.
struct ClaimSeen {
    name: String,
    sent: Instant,
    won: bool,
    shown_after: Option<Duration>,
}

/// The watch-fed state the run loop reads.
pub struct Cache {
    /// This agent's name: never its own peer.
    me: Arc<str>,
    /// When the cache started: [`Waiting::seen`] counts from here.
    born: Instant,
    queues_served: Vec<QueueWeight>,
    stores: Vec<Store>,
    queues: HashMap<String, QueueInfo>,
    /// Each queue's `defaultBudget` time limits (wall, CPU seconds): what an item without
    /// its own is held to.
    queue_time_budgets: HashMap<String, Counters>,
    queues_synced: bool,
    /// The other agents serving any of our queues (from their Leases), and during a
    /// relist of the Lease watch, the ones it has listed so far.
    peers: HashMap<Arc<str>, Peer>,
    peers_relist: Option<HashMap<Arc<str>, Peer>>,
    held: Option<Held>,
    last_claim: Option<ClaimSeen>,
}

/// Something to claim: name, the version the claim is conditional on, and what the
/// claim's status patch builds on.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub name: String,
    pub resource_version: u64,
    epoch: i64,
    attempt: i32,
    /// When this agent first saw it claimable.
    pub seen: Instant,
}

impl Target {
    fn of(name: &str, w: &Waiting, born: Instant) -> Self {
        Target {
            name: name.to_owned(),
            resource_version: w.resource_version,
            epoch: w.epoch,
            attempt: w.attempt,
            seen: born + Duration::from_millis(w.seen.into()),
        }
    }

    /// The minimal item `k8s::fence::claim` needs: name, resourceVersion, attempt and
    /// epoch.
    pub fn as_item(&self) -> WorkItem {
        let mut item = WorkItem::new(&self.name, WorkItemSpec::default());
        item.metadata.resource_version = Some(self.resource_version.to_string());
        item.status = Some(WorkItemStatus {
            attempt: self.attempt,
            claim: (self.epoch > 0).then(|| Claim {
                epoch: self.epoch,
                ..Default::default()
            }),
            ..Default::default()
        });
        item
    }
}

/// One pick: the queue and the candidates to try, in order.
#[derive(Debug)]
pub struct Pick {
    pub queue: String,
    pub order: Vec<Target>,
}

/// What the run loop should do next.
#[derive(Debug)]
pub enum Choice {
    Claim(Pick),
    /// Claimable items exist, but agents that prefer them more get them first; look
    /// again then (or on the next watch event).
    WaitUntil(Instant),
    Nothing,
}

impl Cache {
    /// The cancel grace of `queue` (its default while the WorkQueue is not seen).
    pub fn cancel_grace(&self, queue: Option<&str>) -> Duration {
        let info = queue
            .and_then(|q| self.queues.get(q).copied())
            .unwrap_or(DEFAULT_QUEUE);
        Duration::from_secs(info.cancel_grace_seconds.max(0) as u64)
    }

    /// The time limits of `queue`'s `defaultBudget` (none while the WorkQueue is not seen).
    pub fn queue_time_budget(&self, queue: Option<&str>) -> Counters {
        queue
            .and_then(|q| self.queue_time_budgets.get(q).cloned())
            .unwrap_or_default()
    }

    pub fn new(me: &str, queues: &[QueueWeight]) -> Self {
        Cache {
            me: me.into(),
            born: Instant::now(),
            queues_served: queues.to_vec(),
            stores: queues
                .iter()
                .flat_map(|_| [Store::new(Stream::Spec), Store::new(Stream::Status)])
                .collect(),
            queues: HashMap::new(),
            queue_time_budgets: HashMap::new(),
            queues_synced: false,
            peers: HashMap::new(),
            peers_relist: None,
            held: None,
            last_claim: None,
        }
    }

    pub fn synced(&self) -> bool {
        self.queues_synced && self.stores.iter().all(|s| s.synced)
    }

    /// Keep the whole (slim) view of `name` from now on: the item being claimed.
    pub fn hold(&mut self, name: &str) {
        self.held = Some(Held {
            name: name.to_owned(),
            view: None,
            claimed: None,
            left: None,
        });
        self.last_claim = Some(ClaimSeen {
            name: name.to_owned(),
            sent: Instant::now(),
            won: false,
            shown_after: None,
        });
    }

    /// How long our last won claim took from being sent to taking the item out of our
    /// claimable-items watch, once it has; taken once. Other agents' watches show the
    /// claim about as late, so this is how stale their view of the queue runs.
    pub fn take_claim_shown(&mut self) -> Option<Duration> {
        let seen = self.last_claim.as_ref()?;
        let shown = seen.shown_after.filter(|_| seen.won)?;
        self.last_claim = None;
        Some(shown)
    }

    fn gone_from_queue(&mut self, name: &str) {
        if let Some(seen) = self
            .last_claim
            .as_mut()
            .filter(|s| s.name == name && s.shown_after.is_none())
        {
            seen.shown_after = Some(seen.sent.elapsed());
        }
    }

    /// Our claim of the held item succeeded; `item` is the claim's response.
    pub fn claimed(&mut self, item: &WorkItem) {
        if let Some(held) = self
            .held
            .as_mut()
            .filter(|h| item.metadata.name.as_deref() == Some(h.name.as_str()))
        {
            held.claimed = revision(item);
        }
        if let Some(seen) = self
            .last_claim
            .as_mut()
            .filter(|s| item.metadata.name.as_deref() == Some(s.name.as_str()))
        {
            seen.won = true;
        }
    }

    pub fn release(&mut self) {
        self.held = None;
    }

    /// The freshest view of the held item seen in the watches since [`Cache::hold`].
    pub fn get(&self, name: &str) -> Option<&WorkItem> {
        match &self.held {
            Some(held) if held.name == name => held.view.as_ref(),
            _ => None,
        }
    }

    /// Whether the held item has left this agent since our claim: it is no longer
    /// Running under our name (fenced out, reclaimed, cancelled, or finished by our own
    /// write). The watch's leaving event carries the item as it was before, so this is
    /// the only news of it.
    pub fn left(&self, name: &str) -> bool {
        match &self.held {
            Some(Held {
                name: held,
                claimed: Some(claimed),
                left: Some(left),
                ..
            }) if held == name => left >= claimed,
            _ => false,
        }
    }

    /// Every item once, at its newest version across the stores (the first store wins
    /// a tie). An item sits in two stores only while one watch lags the other, so one
    /// lookup per other store is cheaper than collecting all items into a new map on
    /// every pick.
    fn newest(stores: &[Store]) -> impl Iterator<Item = (&str, &Waiting)> {
        stores.iter().enumerate().flat_map(move |(i, store)| {
            store
                .items
                .iter()
                .filter(move |(name, w)| {
                    !stores.iter().enumerate().any(|(j, other)| {
                        j != i
                            && other.items.get(&**name).is_some_and(|o| {
                                o.resource_version > w.resource_version
                                    || (o.resource_version == w.resource_version && j < i)
                            })
                    })
                })
                .map(|(name, w)| (&**name, w))
        })
    }

    fn apply_item(&mut self, stream: usize, event: Event<WorkItem>) {
        let queues = &self.queues_served;
        let Some(store) = self.stores.get_mut(stream) else {
            return;
        };
        let (item, relisted) = match event {
            Event::Apply(item) => (item, false),
            Event::InitApply(item) => (item, true),
            Event::Delete(item) => {
                if let Some(name) = item.metadata.name.as_deref() {
                    store.items.remove(name);
                    self.gone_from_queue(name);
                }
                return;
            }
            Event::Init => {
                store.relist = Some(HashMap::new());
                return;
            }
            Event::InitDone => {
                if let Some(relist) = store.relist.take() {
                    store.items = relist;
                }
                store.synced = true;
                return;
            }
        };
        let Some(name) = item.metadata.name.as_deref() else {
            return;
        };
        let first = store.first_seen(name);
        let seen = first.map_or_else(
            || u32::try_from(self.born.elapsed().as_millis()).unwrap_or(u32::MAX),
            |(seen, _)| seen,
        );
        let record = waiting_of(&item, store.stream, queues, seen, first.map(|(_, r)| r));
        let map = match store.relist.as_mut() {
            Some(relist) if relisted => relist,
            _ => &mut store.items,
        };
        match record {
            Some(w) => {
                map.insert(name.into(), w);
            }
            None => {
                map.remove(name);
                if !relisted {
                    self.gone_from_queue(name);
                }
            }
        }
    }

    /// An event of the held-items watch. A relist that no longer shows the held item
    /// proves nothing (it may predate our claim); the fence on our next write does.
    fn apply_held(&mut self, event: Event<WorkItem>) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        match event {
            Event::Apply(item) | Event::InitApply(item)
                if item.metadata.name.as_deref() == Some(held.name.as_str())
                    && held.view.as_ref().is_none_or(|v| is_newer(&item, v)) =>
            {
                held.view = Some(slim(item));
            }
            Event::Delete(item) if item.metadata.name.as_deref() == Some(held.name.as_str()) => {
                held.left = held.left.max(revision(&item));
            }
            _ => {}
        }
    }

    fn apply_queue(&mut self, event: Event<WorkQueue>) {
        fn name_if_wanted<'a>(q: &'a WorkQueue, wanted: &[QueueWeight]) -> Option<&'a str> {
            q.metadata
                .name
                .as_deref()
                .filter(|n| wanted.iter().any(|w| w.name == *n))
        }
        let wanted = self.queues_served.clone();
        let wanted = |q| name_if_wanted(q, &wanted);
        match event {
            Event::Apply(q) | Event::InitApply(q) => {
                if let Some(name) = wanted(&q) {
                    self.queues.insert(name.to_owned(), QueueInfo::of(&q));
                    let time: Counters = q
                        .spec
                        .default_budget
                        .iter()
                        .filter(|(c, _)| *c == WALL_SECONDS || *c == CPU_SECONDS)
                        .map(|(c, l)| (c.clone(), *l))
                        .collect();
                    self.queue_time_budgets.insert(name.to_owned(), time);
                }
            }
            Event::Delete(q) => {
                if let Some(name) = wanted(&q) {
                    self.queues.remove(name);
                    self.queue_time_budgets.remove(name);
                }
            }
            // A relist re-applies every queue; entries of deleted queues fall back to
            // the defaults, which is what a missing queue means anyway.
            Event::Init => {
                self.queues.clear();
                self.queue_time_budgets.clear();
            }
            Event::InitDone => self.queues_synced = true,
        }
    }

    /// The agent holding `lease`, if it is another agent serving one of our queues.
    fn peer_of(&self, lease: &Lease) -> Option<(Arc<str>, Duration)> {
        let spec = lease.spec.as_ref()?;
        let holder = spec.holder_identity.as_deref()?;
        if holder == &*self.me {
            return None;
        }
        let serves = lease
            .metadata
            .annotations
            .as_ref()?
            .get(AGENT_QUEUES_ANNOTATION)?;
        let shared = serves
            .split(',')
            .any(|q| self.queues_served.iter().any(|mine| mine.name == q));
        let seconds = u64::try_from(spec.lease_duration_seconds?).ok()?;
        shared.then(|| (holder.into(), Duration::from_secs(seconds.max(1))))
    }

    /// An event of the agent-Lease watch. A renewal seen now is fresh; a listed Lease is
    /// as old as its renewTime says (by the wall clock, clamped to now).
    fn apply_lease(&mut self, event: Event<Lease>, now: Instant, wall: Timestamp) {
        let (lease, listed) = match event {
            Event::Apply(lease) => (lease, false),
            Event::InitApply(lease) => (lease, true),
            Event::Delete(lease) => {
                if let Some((agent, _)) = self.peer_of(&lease) {
                    self.peers.remove(&agent);
                }
                return;
            }
            Event::Init => {
                self.peers_relist = Some(HashMap::new());
                return;
            }
            Event::InitDone => {
                if let Some(relist) = self.peers_relist.take() {
                    self.peers = relist;
                }
                return;
            }
        };
        let Some((agent, duration)) = self.peer_of(&lease) else {
            return;
        };
        let renewed = if listed {
            let renew_time = lease
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0);
            let age = renew_time
                .and_then(|t| Duration::try_from(wall.duration_since(t)).ok())
                .unwrap_or(Duration::MAX);
            now.checked_sub(age).unwrap_or(self.born.min(now))
        } else {
            now
        };
        let peer = Peer { renewed, duration };
        match self.peers_relist.as_mut() {
            Some(relist) if listed => relist.insert(agent, peer),
            _ => self.peers.insert(agent, peer),
        };
    }

    /// The agents serving our queues whose Leases are fresh, and this agent.
    fn live_agents(&self, now: Instant) -> Vec<&str> {
        let mut live: Vec<&str> = self
            .peers
            .iter()
            .filter(|(_, p)| p.alive(now))
            .map(|(a, _)| &**a)
            .collect();
        live.push(&self.me);
        live
    }

    /// Whether the cache shows `name` changed since `resource_version` (claimed by
    /// someone, finished, updated) — after a lost claim, that our view has caught up.
    pub fn moved_past(&self, name: &str, resource_version: u64) -> bool {
        let mut present = false;
        for w in self.stores.iter().filter_map(|s| s.items.get(name)) {
            present = true;
            if w.resource_version > resource_version {
                return true;
            }
        }
        !present
    }

    /// Chooses a queue by weight among those with items this agent may claim now,
    /// then that queue's best candidates in this agent's order
    /// ([`ordering::claim_order`], a window of about two per live agent). An item this
    /// agent does not own among the live agents ([`ordering::standing`]) is tried only
    /// after its defer has passed since it was first seen. Busy agents are not told
    /// apart (their claims are not watched): an item whose owner is busy waits one
    /// defer step per agent ahead. Items in `skip` at the resourceVersion recorded
    /// there (a lost race, our own last claim) are left out until they change.
    pub fn pick(
        &self,
        skip: &HashMap<String, u64>,
        floor_k: usize,
        defer_step: Duration,
        now: Timestamp,
        at: Instant,
        rng: &mut impl Rng,
    ) -> Choice {
        let now_ms = millis(now);
        let infos: Vec<QueueInfo> = self
            .queues_served
            .iter()
            .map(|q| self.queues.get(&q.name).copied().unwrap_or(DEFAULT_QUEUE))
            .collect();
        let mut per_queue: Vec<Vec<(&str, &Waiting)>> = vec![Vec::new(); infos.len()];
        for (name, w) in Cache::newest(&self.stores) {
            let Some(info) = infos.get(usize::from(w.queue)) else {
                continue;
            };
            if claimable_now(w, info, now_ms) && skip.get(name) != Some(&w.resource_version) {
                per_queue[usize::from(w.queue)].push((name, w));
            }
        }
        if per_queue.iter().all(Vec::is_empty) {
            return Choice::Nothing;
        }
        let live = self.live_agents(at);
        let window = ordering::candidate_window(live.len(), floor_k);

        let mut wake: Option<Instant> = None;
        let mut ready: Vec<Vec<Target>> = Vec::with_capacity(infos.len());
        for (items, info) in per_queue.iter().zip(&infos) {
            let candidates: Vec<ordering::Candidate<'_>> = items
                .iter()
                .map(|(name, w)| ordering::Candidate {
                    name,
                    priority: w.priority,
                    created: Timestamp::from_second(w.created.into())
                        .unwrap_or(Timestamp::UNIX_EPOCH),
                    queued_since: timestamp(w.queued_since),
                    revision: w.order_revision(),
                })
                .collect();
            let mut now_ready = Vec::new();
            let order = ordering::claim_order(
                &candidates,
                &self.me,
                &live,
                window,
                info.aging_seconds,
                now,
            );
            for ordering::Ordered { index, standing } in order {
                // The run loop stops at its first win or loss; a few are plenty.
                if now_ready.len() >= READY_PER_PICK {
                    break;
                }
                let (name, w) = items[index];
                let target = Target::of(name, w, self.born);
                let from = target.seen + ordering::claim_defer(standing, defer_step);
                if from <= at {
                    now_ready.push(target);
                } else {
                    wake = Some(wake.map_or(from, |t| t.min(from)));
                }
            }
            ready.push(now_ready);
        }
        let weighted: Vec<ordering::WeightedQueue> = self
            .queues_served
            .iter()
            .zip(&ready)
            .map(|(q, r)| ordering::WeightedQueue {
                weight: q.weight,
                has_work: !r.is_empty(),
            })
            .collect();
        match ordering::weighted_queue_pick(&weighted, rng) {
            Some(qi) => Choice::Claim(Pick {
                queue: self.queues_served[qi].name.clone(),
                order: std::mem::take(&mut ready[qi]),
            }),
            None => wake.map_or(Choice::Nothing, Choice::WaitUntil),
        }
    }
}

pub type SharedCache = Arc<Mutex<Cache>>;

/// Locks the cache; a panic elsewhere while holding the lock leaves plain data behind,
/// so a poisoned lock is still usable.
pub fn lock(cache: &SharedCache) -> std::sync::MutexGuard<'_, Cache> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one watch until aborted, feeding each event to `apply` under the cache lock.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: String,
    cache: SharedCache,
    changed: Arc<Notify>,
    apply: impl Fn(&mut Cache, Event<K>) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    apply(&mut lock(&cache), event);
                    changed.notify_one();
                }
                Err(err) => tracing::warn!(%err, watch = %what, "watch failed; retrying"),
            }
        }
    })
}

/// The watches the cache feeds on: two claimable-items watches per queue, the
/// held-items watch, the namespace's WorkQueues and the agent Leases. Each runs until
/// the returned handles are aborted.
pub fn spawn_watches(
    items: Api<WorkItem>,
    queues_api: Api<WorkQueue>,
    leases: Api<Lease>,
    me: &str,
    queues: Vec<QueueWeight>,
    cache: SharedCache,
    changed: Arc<Notify>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut stream = 0;
    for q in &queues {
        for field in ["spec.queue", "status.queue"] {
            let selector = claimable_selector(field, &q.name);
            let config = watcher::Config::default().fields(&selector);
            let index = stream;
            tasks.push(spawn_watch(
                items.clone(),
                config,
                format!("claimable items {field}={}", q.name),
                cache.clone(),
                changed.clone(),
                move |c: &mut Cache, e| c.apply_item(index, e),
            ));
            stream += 1;
        }
    }
    tasks.push(spawn_watch(
        items,
        watcher::Config::default().fields(&held_selector(me)),
        "held items".into(),
        cache.clone(),
        changed.clone(),
        |c: &mut Cache, e| c.apply_held(e),
    ));
    tasks.push(spawn_watch(
        queues_api,
        watcher::Config::default(),
        "work queues".into(),
        cache.clone(),
        changed.clone(),
        |c: &mut Cache, e| c.apply_queue(e),
    ));
    tasks.push(spawn_watch(
        leases,
        watcher::Config::default().labels(AGENT_LEASE_SELECTOR),
        "agent leases".into(),
        cache,
        changed,
        |c: &mut Cache, e| c.apply_lease(e, Instant::now(), Timestamp::now()),
    ));
    tasks
}

/// The item is no longer ours: a newer epoch (fenced out), or the same epoch under
/// another agent, or it left Running (cancelled, finished) without us.
pub fn fenced(view: &WorkItem, agent: &str, epoch: i64) -> bool {
    let Some(status) = view.status.as_ref() else {
        return false;
    };
    let Some(claim) = status.claim.as_ref() else {
        return false;
    };
    if claim.epoch > epoch {
        return true;
    }
    // An older epoch is a view from before our own claim arrived: no news.
    claim.epoch == epoch && (claim.agent != agent || status.phase != Some(Phase::Running))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Claim, WorkItemSpec, WorkItemStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const STEP: Duration = Duration::from_millis(40);

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_893_456_000 + s).unwrap()
    }

    fn item(name: &str, queue: &str, priority: i32, rv: u64) -> WorkItem {
        let mut wi = WorkItem::new(
            name,
            WorkItemSpec {
                queue: Some(queue.into()),
                priority,
                ..Default::default()
            },
        );
        wi.metadata.resource_version = Some(rv.to_string());
        wi.metadata.creation_timestamp = Some(Time(t(0)));
        wi
    }

    fn with_phase(mut wi: WorkItem, phase: Phase, agent: Option<&str>) -> WorkItem {
        wi.status = Some(WorkItemStatus {
            phase: Some(phase),
            claim: agent.map(|a| Claim {
                agent: a.into(),
                epoch: 1,
                ..Default::default()
            }),
            ..Default::default()
        });
        wi
    }

    fn queued(wi: WorkItem) -> WorkItem {
        with_phase(wi, Phase::Queued, None)
    }

    fn qs(list: &[(&str, i32)]) -> Vec<QueueWeight> {
        list.iter()
            .map(|(n, w)| QueueWeight {
                name: (*n).into(),
                weight: *w,
            })
            .collect()
    }

    fn cache_with(me: &str, queues: &[QueueWeight], items: Vec<WorkItem>) -> Cache {
        let mut c = Cache::new(me, queues);
        for i in items {
            c.apply_item(0, Event::Apply(i));
        }
        for s in 0..c.stores.len() {
            c.apply_item(s, Event::InitDone);
        }
        c.apply_queue(Event::InitDone);
        c
    }

    fn names(choice: Choice) -> Vec<String> {
        match choice {
            Choice::Claim(p) => p.order.into_iter().map(|t| t.name).collect(),
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    fn pick_now(c: &mut Cache, skip: &HashMap<String, u64>, k: usize) -> Choice {
        // Far enough in the future that no defer is pending.
        let later = Instant::now() + Duration::from_secs(60);
        c.pick(skip, k, STEP, t(0), later, &mut StdRng::seed_from_u64(1))
    }

    #[test]
    fn slim_drops_payload_and_history_but_keeps_what_checks_need() {
        let mut wi = item("a", "q", 7, 5);
        wi.spec.payload = Some(serde_json::json!({"big": "x".repeat(10_000)}).into());
        wi.spec.depends_on = vec!["x".into(), "y".into()];
        wi.status = Some(WorkItemStatus {
            attempt: 2,
            claim: Some(Claim {
                agent: "g".into(),
                epoch: 3,
                ..Default::default()
            }),
            result: Some(serde_json::json!({"r": 1}).into()),
            ..Default::default()
        });
        let s = slim(wi);
        assert!(s.spec.payload.is_none());
        assert_eq!(s.spec.depends_on.len(), 1);
        let st = s.status.unwrap();
        assert_eq!((st.attempt, st.claim.unwrap().epoch), (2, 3));
        assert!(st.result.is_none());
        assert_eq!(s.metadata.resource_version.as_deref(), Some("5"));
    }

    #[test]
    fn only_claimable_looking_items_are_kept() {
        let queues = qs(&[("q", 1)]);
        let keep = |wi: &WorkItem| waiting_of(wi, Stream::Spec, &queues, 0, None);
        assert!(keep(&item("a", "q", 1, 1)).is_some());
        assert!(keep(&queued(item("a", "q", 1, 1))).is_some());
        assert!(keep(&item("a", "other", 1, 1)).is_none(), "not our queue");
        for done in [Phase::Succeeded, Phase::Failed, Phase::Pending, Phase::Held] {
            assert!(keep(&with_phase(item("a", "q", 1, 1), done, None)).is_none());
        }
        let running = with_phase(item("a", "q", 1, 1), Phase::Running, Some("other"));
        assert!(keep(&running).is_none(), "claimed: not ours to choose");
        let mut cancelled = item("a", "q", 1, 1);
        cancelled.spec.cancel = true;
        assert!(keep(&cancelled).is_none());
        let mut deps = item("a", "q", 1, 1);
        deps.spec.depends_on = vec!["b".into()];
        assert!(keep(&deps).is_none(), "pending on dependencies");
        let mut routed = queued(item("a", "q", 1, 1));
        routed.status.as_mut().unwrap().queue = Some("escalated".into());
        assert!(keep(&routed).is_none(), "routing overrides spec.queue");
        let routed_here = qs(&[("escalated", 1)]);
        assert!(waiting_of(&routed, Stream::Status, &routed_here, 0, None).is_some());
        assert!(
            waiting_of(&routed, Stream::Spec, &routed_here, 0, None).is_none(),
            "kept once: by the status.queue watch"
        );
        let mut admitted = queued(item("a", "q", 1, 1));
        admitted.status.as_mut().unwrap().queue = Some("q".into());
        assert!(waiting_of(&admitted, Stream::Status, &queues, 0, None).is_some());
        assert!(waiting_of(&admitted, Stream::Spec, &queues, 0, None).is_none());
        let mut odd = item("a", "q", 1, 1);
        odd.metadata.resource_version = Some("not-a-revision".into());
        assert!(keep(&odd).is_none(), "only etcd revisions are comparable");
    }

    #[test]
    fn a_waiting_record_stays_small() {
        // 50 000 queued items must fit an agent in well under 30 MB.
        assert!(std::mem::size_of::<Waiting>() <= 64);
    }

    #[test]
    fn max_in_flight_queues_need_admission() {
        let queues = qs(&[("q", 1)]);
        let mut c = cache_with("me", &queues, vec![item("fresh", "q", 500, 1)]);
        let mut limited = WorkQueue::new("q", Default::default());
        limited.spec.max_in_flight = Some(2);
        c.apply_queue(Event::Apply(limited));
        assert!(matches!(
            pick_now(&mut c, &HashMap::new(), 4),
            Choice::Nothing
        ));
        c.apply_item(0, Event::Apply(queued(item("fresh", "q", 500, 2))));
        assert_eq!(names(pick_now(&mut c, &HashMap::new(), 4)), ["fresh"]);
    }

    #[test]
    fn not_before_and_deadline_bound_the_claim() {
        let queues = qs(&[("q", 1)]);
        let mut later = item("later", "q", 1, 1);
        later.spec.not_before = Some(Time(t(10)));
        later.spec.queue = Some("q".into());
        let c = cache_with("me", &queues, vec![queued(later)]);
        let at = Instant::now() + Duration::from_secs(60);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(matches!(
            c.pick(&HashMap::new(), 4, STEP, t(5), at, &mut rng),
            Choice::Nothing
        ));
        assert!(matches!(
            c.pick(&HashMap::new(), 4, STEP, t(10), at, &mut rng),
            Choice::Claim(_)
        ));
    }

    #[test]
    fn pick_prefers_the_top_and_skips_lost_races() {
        let queues = qs(&[("q", 1)]);
        let mut c = cache_with(
            "me",
            &queues,
            vec![
                item("low", "q", 1, 1),
                item("high", "q", 900, 2),
                item("mid", "q", 500, 3),
            ],
        );
        // Alone, the agent considers two candidates: the top two, best first.
        assert_eq!(names(pick_now(&mut c, &HashMap::new(), 1)), ["high", "mid"]);
        let skip = [("high".to_owned(), 2)].into();
        assert_eq!(names(pick_now(&mut c, &skip, 1))[0], "mid");
        // A newer version of a skipped item is a new chance.
        c.apply_item(0, Event::Apply(item("high", "q", 900, 9)));
        assert_eq!(names(pick_now(&mut c, &skip, 1))[0], "high");
        // Claimed by someone else: gone from the candidates.
        c.apply_item(
            0,
            Event::Apply(with_phase(
                item("high", "q", 900, 10),
                Phase::Running,
                Some("x"),
            )),
        );
        assert_eq!(names(pick_now(&mut c, &skip, 1)), ["mid", "low"]);
    }

    #[test]
    fn the_claim_target_carries_version_attempt_and_epoch() {
        let queues = qs(&[("q", 1)]);
        let mut retried = queued(item("a", "q", 1, 42));
        let st = retried.status.as_mut().unwrap();
        st.attempt = 3;
        st.claim = Some(Claim {
            agent: "old".into(),
            epoch: 7,
            ..Default::default()
        });
        let mut c = cache_with("me", &queues, vec![retried]);
        let Choice::Claim(p) = pick_now(&mut c, &HashMap::new(), 1) else {
            panic!("claimable");
        };
        let target = p.order[0].as_item();
        assert_eq!(target.metadata.name.as_deref(), Some("a"));
        assert_eq!(target.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(
            (target.status.as_ref().unwrap().attempt, target.epoch()),
            (3, 7)
        );
    }

    fn lease(agent: &str, queues: &str, renewed: Timestamp) -> Lease {
        use k8s_openapi::api::coordination::v1::LeaseSpec;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let mut l = Lease::default();
        l.metadata.name = Some(format!("triad-agent-{agent}"));
        l.metadata.annotations =
            Some([(AGENT_QUEUES_ANNOTATION.to_owned(), queues.to_owned())].into());
        l.spec = Some(LeaseSpec {
            holder_identity: Some(agent.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..Default::default()
        });
        l
    }

    #[test]
    fn idle_agents_leave_each_new_item_to_its_owner_first() {
        let queues = qs(&[("q", 1)]);
        let agents = ["agent-a", "agent-b", "agent-c"];
        let now = Instant::now();
        let mut caches: Vec<Cache> = agents
            .iter()
            .map(|me| {
                let mut c = cache_with(me, &queues, vec![]);
                for a in agents {
                    c.apply_lease(Event::Apply(lease(a, "q", t(0))), now, t(0));
                }
                c
            })
            .collect();
        for (c, i) in caches.iter().zip(0u64..) {
            assert_eq!(c.live_agents(now).len(), 3, "agent {i} knows its peers");
        }
        let mut owners = 0;
        let mut deferred = 0;
        for n in 0..30 {
            let name = format!("new-{n}");
            for c in caches.iter_mut() {
                c.apply_item(0, Event::Apply(item(&name, "q", 1, 100 + n)));
            }
            for c in caches.iter_mut() {
                let at = Instant::now();
                let choice = c.pick(
                    &HashMap::new(),
                    1,
                    STEP,
                    t(0),
                    at,
                    &mut StdRng::seed_from_u64(2),
                );
                match choice {
                    Choice::Claim(p) => {
                        assert_eq!(p.order[0].name, name);
                        owners += 1;
                    }
                    Choice::WaitUntil(wake) => {
                        assert!(wake > at);
                        deferred += 1;
                    }
                    Choice::Nothing => panic!("there is work"),
                }
                // The next item: this one is claimed by its owner and leaves the
                // claimable-items watch.
                c.apply_item(0, Event::Delete(item(&name, "q", 1, 100 + n)));
            }
        }
        assert_eq!(owners, 30, "exactly one agent claims each new item at once");
        assert_eq!(deferred, 60);
        // Unclaimed after the defer, an item is anyone's.
        let c = &mut caches[0];
        c.apply_item(0, Event::Apply(item("late", "q", 1, 999)));
        let later = Instant::now() + ordering::MAX_CLAIM_DEFER;
        assert!(matches!(
            c.pick(
                &HashMap::new(),
                1,
                STEP,
                t(0),
                later,
                &mut StdRng::seed_from_u64(3)
            ),
            Choice::Claim(_)
        ));
    }

    #[test]
    fn weighted_queues_and_empty_ones() {
        let queues = qs(&[("feature", 3), ("bug", 1), ("docs", 5)]);
        let c = cache_with(
            "me",
            &queues,
            vec![item("a", "feature", 500, 1), item("b", "bug", 500, 2)],
        );
        let later = Instant::now() + Duration::from_secs(60);
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts: HashMap<String, u32> = HashMap::new();
        for _ in 0..400 {
            let Choice::Claim(p) = c.pick(&HashMap::new(), 2, STEP, t(0), later, &mut rng) else {
                panic!("work exists");
            };
            *counts.entry(p.queue).or_default() += 1;
        }
        assert!(counts["feature"] > counts["bug"] * 2, "{counts:?}");
        assert!(!counts.contains_key("docs"));
    }

    #[test]
    fn alone_an_agent_takes_a_second_in_creation_order_despite_waiting_writes() {
        let queues = qs(&[("q", 1)]);
        // Created in one second, named in reverse creation order (revisions 1..=4).
        let created = ["d", "c", "b", "a"];
        let mut c = cache_with(
            "me",
            &queues,
            created
                .iter()
                .zip(1..)
                .map(|(n, rv)| item(n, "q", 500, rv))
                .collect(),
        );
        // While they wait, the scheduler writes the oldest last (Queued, position N).
        c.apply_item(0, Event::Apply(queued(item("d", "q", 500, 9))));
        c.apply_item(0, Event::Init);
        for (n, rv) in [("c", 5), ("a", 6), ("b", 7), ("d", 9)] {
            c.apply_item(0, Event::InitApply(queued(item(n, "q", 500, rv))));
        }
        c.apply_item(0, Event::InitDone);
        let mut skip = HashMap::new();
        let mut taken = Vec::new();
        for _ in 0..created.len() {
            let Choice::Claim(p) = pick_now(&mut c, &skip, 1) else {
                panic!("claimable");
            };
            let first = &p.order[0];
            skip.insert(first.name.clone(), first.resource_version);
            taken.push(first.name.clone());
        }
        assert_eq!(taken, created, "storage order as first seen, not the name");
        // Back in the queue after leaving it (a retry): behind its same-second peers.
        c.apply_item(0, Event::Delete(item("d", "q", 500, 9)));
        c.apply_item(0, Event::Apply(queued(item("d", "q", 500, 20))));
        c.apply_item(0, Event::Apply(queued(item("z", "q", 500, 12))));
        assert_eq!(names(pick_now(&mut c, &skip, 1))[0], "z");
    }

    #[test]
    fn relist_replaces_a_stream_and_newest_version_wins() {
        let queues = qs(&[("q", 1)]);
        let mut c = cache_with(
            "me",
            &queues,
            vec![item("a", "q", 500, 1), item("gone", "q", 500, 2)],
        );
        c.apply_item(0, Event::Init);
        c.apply_item(0, Event::InitApply(item("a", "q", 500, 3)));
        c.apply_item(0, Event::InitDone);
        assert_eq!(names(pick_now(&mut c, &HashMap::new(), 8)), ["a"]);
        c.apply_item(1, Event::Apply(item("a", "q", 500, 10)));
        let Choice::Claim(p) = pick_now(&mut c, &HashMap::new(), 8) else {
            panic!("claimable");
        };
        assert_eq!(p.order[0].resource_version, 10);
    }

    #[test]
    fn a_lost_claim_is_caught_up_on_once_the_winner_shows() {
        let queues = qs(&[("q", 1)]);
        let mut c = cache_with("me", &queues, vec![item("a", "q", 1, 5)]);
        assert!(!c.moved_past("a", 5), "still the version we lost on");
        // The winner's claim takes it out of the claimable-items watch.
        c.apply_item(0, Event::Delete(item("a", "q", 1, 5)));
        assert!(c.moved_past("a", 5), "the winner's claim arrived");
        assert!(c.moved_past("gone", 5), "not in the cache at all");
    }

    #[test]
    fn a_won_claim_is_timed_until_it_leaves_the_claimable_watch() {
        let queues = qs(&[("q", 1)]);
        let mut c = cache_with(
            "me",
            &queues,
            vec![item("a", "q", 1, 5), item("b", "q", 1, 6)],
        );
        let mine = |name, rv| with_phase(item(name, "q", 1, rv), Phase::Running, Some("me"));
        // A lost claim is not timed: someone else's claim took the item away.
        c.hold("b");
        c.release();
        c.apply_item(0, Event::Delete(item("b", "q", 1, 6)));
        assert_eq!(c.take_claim_shown(), None);
        // A won claim is timed once the watch shows it, even after the work is done.
        c.hold("a");
        c.claimed(&mine("a", 8));
        c.release();
        assert_eq!(c.take_claim_shown(), None, "not shown yet");
        c.apply_item(0, Event::Delete(item("a", "q", 1, 5)));
        assert!(c.take_claim_shown().is_some());
        assert_eq!(c.take_claim_shown(), None, "taken once");
    }

    #[test]
    fn the_held_item_is_kept_whole_and_only_it() {
        let queues = qs(&[("q", 1)]);
        let mut c = cache_with("me", &queues, vec![]);
        c.hold("a");
        let mine = |rv| with_phase(item("a", "q", 1, rv), Phase::Running, Some("me"));
        c.apply_held(Event::Apply(mine(5)));
        c.apply_held(Event::Apply(with_phase(
            item("b", "q", 1, 6),
            Phase::Running,
            Some("me"),
        )));
        let version = |c: &Cache| c.get("a").and_then(|i| i.metadata.resource_version.clone());
        assert_eq!(version(&c).as_deref(), Some("5"));
        assert!(c.get("b").is_none());
        // An older copy (a relist) does not replace a newer one.
        c.apply_held(Event::InitApply(mine(4)));
        assert_eq!(version(&c).as_deref(), Some("5"));
        c.release();
        assert!(c.get("a").is_none());
    }

    #[test]
    fn leaving_the_held_items_watch_after_our_claim_means_the_item_left_us() {
        let queues = qs(&[("q", 1)]);
        let mut c = cache_with("me", &queues, vec![]);
        let mine = |rv| with_phase(item("a", "q", 1, rv), Phase::Running, Some("me"));
        c.hold("a");
        // A leaving event of an earlier attempt of ours, delivered late.
        c.apply_held(Event::Delete(mine(3)));
        c.claimed(&mine(8));
        assert!(!c.left("a"), "older than our claim: no news");
        c.apply_held(Event::Apply(mine(8)));
        assert!(!c.left("a"));
        // Fenced out: the event carries the item as it was (ours, Running).
        c.apply_held(Event::Delete(mine(9)));
        assert!(c.left("a"));
        assert!(!c.left("b"));
        // A relist that does not show it is no proof either way.
        c.hold("x");
        c.claimed(&with_phase(
            item("x", "q", 1, 20),
            Phase::Running,
            Some("me"),
        ));
        c.apply_held(Event::Init);
        c.apply_held(Event::InitDone);
        assert!(!c.left("x"));
        c.release();
        assert!(!c.left("x"));
    }

    #[test]
    fn peers_are_the_fresh_leases_of_agents_sharing_a_queue() {
        let queues = qs(&[("q", 1), ("r", 1)]);
        let mut c = Cache::new("me", &queues);
        let now = Instant::now() + Duration::from_secs(120);
        let wall = t(1000);
        let listed = |c: &mut Cache, l| c.apply_lease(Event::InitApply(l), now, wall);
        c.apply_lease(Event::Init, now, wall);
        listed(&mut c, lease("me", "q", wall));
        listed(&mut c, lease("b", "x,r", t(995)));
        listed(&mut c, lease("other-queue", "x", wall));
        listed(&mut c, lease("stale", "q", t(900)));
        let mut unannotated = lease("older", "q", wall);
        unannotated.metadata.annotations = None;
        listed(&mut c, unannotated);
        c.apply_lease(Event::InitDone, now, wall);
        let mut live = c.live_agents(now);
        live.sort();
        assert_eq!(live, ["b", "me"]);
        // A renewal seen later revives a stale one; a deleted Lease is gone.
        c.apply_lease(Event::Apply(lease("stale", "q", t(900))), now, wall);
        c.apply_lease(Event::Delete(lease("b", "r", wall)), now, wall);
        let mut live = c.live_agents(now);
        live.sort();
        assert_eq!(live, ["me", "stale"]);
        // Silent for two lease durations: presumed gone.
        assert_eq!(c.live_agents(now + Duration::from_secs(31)), ["me"]);
        // The window grows with the live agents.
        let agents = c.live_agents(now).len();
        assert_eq!(ordering::candidate_window(agents, 1), 4);
    }

    #[test]
    fn claimable_watches_exclude_every_phase_but_queued() {
        let s = claimable_selector("spec.queue", "q");
        assert!(s.starts_with("spec.queue=q,"));
        for p in Phase::ALL {
            let excluded = s.contains(&format!("status.phase!={}", p.as_str()));
            assert_eq!(excluded, p != Phase::Queued, "{p:?}");
        }
        assert_eq!(
            held_selector("me"),
            "status.claim.agent=me,status.phase=Running"
        );
    }

    #[test]
    fn not_synced_until_every_watch_listed() {
        let queues = qs(&[("q", 1)]);
        let mut c = Cache::new("me", &queues);
        c.apply_item(0, Event::InitDone);
        c.apply_queue(Event::InitDone);
        assert!(!c.synced());
        c.apply_item(1, Event::InitDone);
        assert!(c.synced());
    }

    #[test]
    fn fence_detection() {
        let mut wi = item("a", "q", 500, 1);
        wi.status = Some(WorkItemStatus {
            phase: Some(Phase::Running),
            claim: Some(Claim {
                agent: "me".into(),
                epoch: 5,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(!fenced(&wi, "me", 5));
        assert!(!fenced(&wi, "me", 6), "a view older than our claim");
        assert!(fenced(&wi, "me", 4), "epoch bumped past ours");
        assert!(fenced(&wi, "other", 5));
        wi.status.as_mut().unwrap().phase = Some(Phase::Cancelled);
        assert!(fenced(&wi, "me", 5));
    }
}
