//! Claim order: priority with aging, FIFO within equal priority, and how agents of a
//! pool spread their claims without talking to each other.
//!
//! Effective priority = `priority + floor(waited / agingSeconds)`, where `waited` is
//! the time since the item became claimable (the latest of creation, notBefore and
//! retryAt) so that time spent in backoff is not rewarded. `agingSeconds` 0 turns
//! aging off. The sum is computed in i64 and saturates, so it stays well defined for
//! any wait; it is deliberately not capped lower, because any cap lets a steady stream
//! of high-priority work starve an item that hit the cap. Ties go to the older item by
//! creation time, then by storage order, then by name, so the order is total and
//! deterministic. Creation times have one-second grain, so items created within one
//! second are told apart by their etcd revision (`resourceVersion`): for an item not
//! written since it was created, which a queued item on the fast path is, that is its
//! creation revision. Agents use the revision at which they first saw an item
//! claimable, so a status write while it waits (the scheduler's Queued, "position N")
//! does not move it back; an item that left the queue and came back (a retry) sorts
//! after its same-second peers.
//!
//! Agents: a claim is a compare-and-swap, and every lost race is a refused write the
//! API server still pays for. So each agent orders equal candidates by its own hash of
//! the item ([`affinity`]) and, among the agents it believes idle, only the one that
//! prefers an item most ([`standing`] 0, rendezvous hashing) claims it at once; the
//! others give it [`claim_defer`] first. Beliefs about who is idle come from the
//! claims each agent sees in its watch, so they can be briefly wrong; then an item
//! waits at most a few defer steps, and a CAS still decides.

use std::cmp::Reverse;

use jiff::Timestamp;
use rand::Rng;

use super::{seconds_since, ts};
use crate::api::WorkItem;

/// What ordering needs to know about one claimable item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub name: &'a str,
    /// `WorkItem::effective_priority` (spec, or raised by escalation).
    pub priority: i32,
    pub created: Timestamp,
    /// When it became claimable; see [`queued_since`].
    pub queued_since: Timestamp,
    /// Storage order within a creation second: an etcd revision (see the module doc).
    pub revision: u64,
}

impl<'a> Candidate<'a> {
    pub fn of(item: &'a WorkItem) -> Self {
        let created =
            ts(item.metadata.creation_timestamp.as_ref()).unwrap_or(Timestamp::UNIX_EPOCH);
        Candidate {
            name: item.metadata.name.as_deref().unwrap_or(""),
            priority: item.effective_priority(),
            created,
            queued_since: queued_since(item).unwrap_or(created),
            revision: item
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// The latest of creation, notBefore and retryAt: when the item became claimable.
pub fn queued_since(item: &WorkItem) -> Option<Timestamp> {
    let retry_at = item.status.as_ref().and_then(|s| ts(s.retry_at.as_ref()));
    [
        ts(item.metadata.creation_timestamp.as_ref()),
        ts(item.spec.not_before.as_ref()),
        retry_at,
    ]
    .into_iter()
    .flatten()
    .max()
}

/// `priority + floor(waited_seconds / aging_seconds)`; see the module doc.
pub fn effective_priority(priority: i32, waited_seconds: i64, aging_seconds: i64) -> i64 {
    let boost = if aging_seconds > 0 {
        waited_seconds.max(0) / aging_seconds
    } else {
        0
    };
    i64::from(priority).saturating_add(boost)
}

/// Sort key: smaller ranks are claimed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank<'a>(Reverse<i64>, Timestamp, u64, &'a str);

impl Rank<'_> {
    pub fn effective_priority(&self) -> i64 {
        self.0.0
    }
}

pub fn rank<'a>(c: &Candidate<'a>, aging_seconds: i64, now: Timestamp) -> Rank<'a> {
    let waited = seconds_since(c.queued_since, now);
    Rank(
        Reverse(effective_priority(c.priority, waited, aging_seconds)),
        c.created,
        c.revision,
        c.name,
    )
}

/// Indexes of the best `k` candidates, best first, in O(n + k log k): a partial
/// selection, not a sort of the whole queue.
pub fn top_k(
    candidates: &[Candidate<'_>],
    k: usize,
    aging_seconds: i64,
    now: Timestamp,
) -> Vec<usize> {
    best_k(
        candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (rank(c, aging_seconds, now), i))
            .collect(),
        k,
    )
}

/// Indexes of the `k` smallest keys, smallest first: a partial selection, then a sort
/// of only those `k`.
fn best_k<K: Ord>(mut ranked: Vec<(K, usize)>, k: usize) -> Vec<usize> {
    let k = k.min(ranked.len());
    if k == 0 {
        return vec![];
    }
    if k < ranked.len() {
        ranked.select_nth_unstable(k - 1);
        ranked.truncate(k);
    }
    ranked.sort_unstable();
    ranked.into_iter().map(|(_, i)| i).collect()
}

/// An agent's preference for an item, the same in every agent process: FNV-1a over
/// the agent's and the item's names, then the splitmix64 finaliser so that names that
/// differ in one character land far apart. Deliberately not `std`'s hasher, whose
/// output may change between Rust versions (agents of one pool can run different
/// builds during a rollout).
pub fn affinity(agent: &str, item: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") hash differently.
    for b in agent.bytes().chain([0xff]).chain(item.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Where `me` stands among the agents believed idle for `item` (rendezvous hashing):
/// 0 means `me` owns it, n means n idle agents prefer it more. Agents that see the
/// same idle set agree on one owner without talking to each other.
pub fn standing(me: &str, idle: &[&str], item: &str) -> usize {
    let mine = affinity(me, item);
    idle.iter()
        .filter(|p| **p != me)
        .filter(|p| {
            let theirs = affinity(p, item);
            theirs > mine || (theirs == mine && **p < me)
        })
        .count()
}

/// How long an agent lets each agent ahead of it take an item before it tries itself:
/// about the time the owner's claim (one write) takes to reach the others' watches:
/// the claim's round trip, and about as long again for the watch. So the agent scales
/// its step with its own recent claim round trip (two of them), within these bounds.
/// A longer step costs idle agents latency whenever an item's owner is busy.
/// The floor is about an idle claim's round trip on a quiet API server.
pub const MIN_CLAIM_DEFER_STEP: std::time::Duration = std::time::Duration::from_millis(10);
pub const MAX_CLAIM_DEFER_STEP: std::time::Duration = std::time::Duration::from_millis(250);

/// The longest an agent leaves an item to others, whatever its standing.
pub const MAX_CLAIM_DEFER: std::time::Duration = std::time::Duration::from_secs(3);

/// The defer step for an agent whose claims recently took `claim_round_trip`.
pub fn claim_defer_step(claim_round_trip: std::time::Duration) -> std::time::Duration {
    (claim_round_trip * 2).clamp(MIN_CLAIM_DEFER_STEP, MAX_CLAIM_DEFER_STEP)
}

/// How long an agent at `standing` waits before trying an item it does not own: one
/// step per idle agent ahead of it, so that when the owner does not take the item the
/// next in line does, one at a time, instead of all the others at once.
pub fn claim_defer(standing: usize, step: std::time::Duration) -> std::time::Duration {
    let steps = u32::try_from(standing).unwrap_or(u32::MAX);
    step.saturating_mul(steps).min(MAX_CLAIM_DEFER)
}

/// How many candidates an agent considers: about two per agent competing for the
/// queue, so that agents choosing at the same moment mostly choose different items, and
/// at least `floor` (the agent's `--claim-top-k`).
pub fn candidate_window(peers: usize, floor: usize) -> usize {
    floor.max(1).max(peers.saturating_mul(2))
}

/// Sort key of an agent's claim order: effective priority, then creation second (FIFO
/// at one-second grain, even with aging off), then this agent's [`affinity`] when it
/// shares the queue (0 when alone), then storage order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct AgentRank<'a>(Reverse<i64>, i64, Reverse<u64>, u64, &'a str);

/// The best `k` candidates in the order agent `me` tries them, in O(n + k log k).
/// Priority and aging hold across agents. Within one priority and creation second an
/// agent that shares the queue (`alone` false) has its own order, so that concurrent
/// choices rarely collide; an agent alone has nobody to collide with and takes them in
/// storage order, which is creation order (strict FIFO).
pub fn agent_order(
    candidates: &[Candidate<'_>],
    me: &str,
    alone: bool,
    k: usize,
    aging_seconds: i64,
    now: Timestamp,
) -> Vec<usize> {
    let ranked = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let Rank(priority, created, revision, name) = rank(c, aging_seconds, now);
            let spread = if alone { 0 } else { affinity(me, name) };
            let key = AgentRank(
                priority,
                created.as_second(),
                Reverse(spread),
                revision,
                name,
            );
            (key, i)
        })
        .collect();
    best_k(ranked, k)
}

/// One candidate of [`claim_order`]: its index and where the agent stands for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ordered {
    pub index: usize,
    pub standing: usize,
}

/// The order in which agent `me` tries candidates when `live` (itself included) are
/// the agents serving the queue: its window of the best `k` in queue order
/// ([`agent_order`]), and within one priority and creation second the items it stands
/// best for first, each with its [`standing`], and among equal standings the older
/// first by storage order (so an agent takes the items it owns in creation order, and
/// an agent alone takes a second's items strictly FIFO).
///
/// Why standing and not only the agent's own preference: in a backlog every item has
/// waited longer than any defer, so the defer no longer keeps agents apart, and an
/// agent's favourite items that are still unclaimed in its (slightly late) cache are
/// often the ones their owners have just claimed. Taking the items it owns first means
/// two agents reach for the same item mostly when one has run out of its own in the
/// oldest second. The creation second stays ahead of standing so that the items of a
/// busy owner are taken by the next agent in line before newer items are, not left
/// behind.
pub fn claim_order(
    candidates: &[Candidate<'_>],
    me: &str,
    live: &[&str],
    k: usize,
    aging_seconds: i64,
    now: Timestamp,
) -> Vec<Ordered> {
    let alone = live.iter().all(|a| *a == me);
    let order = agent_order(candidates, me, alone, k, aging_seconds, now);
    // The agent's own position last keeps its order among equal revisions.
    let mut keyed: Vec<(Reverse<i64>, i64, usize, u64, usize)> = order
        .iter()
        .enumerate()
        .map(|(position, &index)| {
            let Rank(priority, created, revision, name) =
                rank(&candidates[index], aging_seconds, now);
            (
                priority,
                created.as_second(),
                standing(me, live, name),
                revision,
                position,
            )
        })
        .collect();
    keyed.sort_unstable();
    keyed
        .into_iter()
        .map(|(_, _, standing, _, position)| Ordered {
            index: order[position],
            standing,
        })
        .collect()
}

/// One of an agent pool's queues, for [`weighted_queue_pick`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightedQueue {
    pub weight: i32,
    /// Whether the queue has a claimable item (and room under maxInFlight).
    pub has_work: bool,
}

/// Picks a queue with work, with probability proportional to its weight. Weights
/// below 1 count as 1 (the API requires 1–100), so every queue with work can be
/// picked. None when no queue has work.
pub fn weighted_queue_pick(queues: &[WeightedQueue], rng: &mut impl Rng) -> Option<usize> {
    let weight = |q: &WeightedQueue| u64::try_from(q.weight.max(1)).unwrap_or(1);
    let total: u64 = queues.iter().filter(|q| q.has_work).map(weight).sum();
    if total == 0 {
        return None;
    }
    let mut roll = rng.random_range(0..total);
    for (i, q) in queues.iter().enumerate().filter(|(_, q)| q.has_work) {
        let w = weight(q);
        if roll < w {
            return Some(i);
        }
        roll -= w;
    }
    None
}

/// 1-based position of `candidates[index]` in claim order, in O(n).
pub fn position_in_queue(
    candidates: &[Candidate<'_>],
    index: usize,
    aging_seconds: i64,
    now: Timestamp,
) -> usize {
    let me = rank(&candidates[index], aging_seconds, now);
    1 + candidates
        .iter()
        .enumerate()
        .filter(|(i, c)| *i != index && rank(c, aging_seconds, now) < me)
        .count()
}

/// 1-based positions of all candidates (by index) in one O(n log n) sort, for a
/// scheduler that refreshes every item's "position N" at once.
pub fn positions(candidates: &[Candidate<'_>], aging_seconds: i64, now: Timestamp) -> Vec<usize> {
    let mut order: Vec<(Rank<'_>, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (rank(c, aging_seconds, now), i))
        .collect();
    order.sort_unstable();
    let mut pos = vec![0; candidates.len()];
    for (p, (_, i)) in order.into_iter().enumerate() {
        pos[i] = p + 1;
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{WorkItemSpec, WorkItemStatus};
    use crate::core::testutil::{t, time};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn c(name: &str, priority: i32, created: i64) -> Candidate<'_> {
        Candidate {
            name,
            priority,
            created: t(created),
            queued_since: t(created),
            revision: 0,
        }
    }

    /// A candidate written to etcd at `revision`.
    fn at(name: &str, priority: i32, created: i64, revision: u64) -> Candidate<'_> {
        Candidate {
            revision,
            ..c(name, priority, created)
        }
    }

    #[test]
    fn aging_formula() {
        assert_eq!(effective_priority(500, 0, 60), 500);
        assert_eq!(effective_priority(500, 59, 60), 500);
        assert_eq!(effective_priority(500, 60, 60), 501);
        assert_eq!(effective_priority(500, 3600, 60), 560);
        assert_eq!(effective_priority(500, 3600, 0), 500, "0 = no aging");
        assert_eq!(effective_priority(500, -100, 1), 500, "clock skew");
        assert_eq!(effective_priority(1000, i64::MAX, 1), i64::MAX, "saturates");
    }

    #[test]
    fn higher_priority_first_then_fifo_then_name() {
        let cs = [
            c("b", 500, 10),
            c("a", 500, 10),
            c("old", 500, 0),
            c("hi", 900, 20),
        ];
        let order: Vec<&str> = top_k(&cs, 4, 0, t(100))
            .into_iter()
            .map(|i| cs[i].name)
            .collect();
        assert_eq!(order, ["hi", "old", "a", "b"]);
    }

    #[test]
    fn within_a_creation_second_storage_order_comes_before_the_name() {
        // Created 100 ms apart in one second, named in reverse: the revision decides.
        let cs = [
            at("c", 500, 10, 103),
            at("b", 500, 10, 101),
            at("a", 500, 10, 102),
            at("older", 500, 9, 200),
            at("hi", 900, 11, 300),
        ];
        let order: Vec<&str> = top_k(&cs, 5, 0, t(20))
            .into_iter()
            .map(|i| cs[i].name)
            .collect();
        assert_eq!(
            order,
            ["hi", "older", "b", "a", "c"],
            "priority, then second, then revision"
        );
        assert_eq!(positions(&cs, 0, t(20)), vec![5, 3, 4, 2, 1]);
        // Aging still outranks the revision: the item waiting longer gains a point.
        let aged = [at("new", 500, 10, 1), at("old", 500, 0, 2)];
        assert_eq!(top_k(&aged, 1, 10, t(19)), vec![1]);
    }

    #[test]
    fn an_agent_alone_takes_a_second_strictly_in_creation_order() {
        // Eight items 100 ms apart across two seconds, named in reverse order; a window
        // of 2 (top-k 1) must still reach for the oldest first, whoever the agent is.
        let names: Vec<String> = (0..8).map(|i| format!("item-{}", 7 - i)).collect();
        let cs: Vec<Candidate<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| at(n, 500, 10 + i as i64 / 5, 100 + i as u64))
            .collect();
        for me in ["a", "b", "solo", "agent-7"] {
            let mut left: Vec<usize> = (0..cs.len()).collect();
            let mut taken = Vec::new();
            while !left.is_empty() {
                let rest: Vec<Candidate<'_>> = left.iter().map(|&i| cs[i]).collect();
                let first = claim_order(&rest, me, &[me], 2, 0, t(20))[0];
                assert_eq!(first.standing, 0);
                taken.push(left.remove(first.index));
            }
            assert_eq!(taken, (0..8).collect::<Vec<_>>(), "agent {me}");
        }
        // Priority still comes first.
        let mixed = [at("z-old", 1, 10, 1), at("a-new", 900, 10, 2)];
        assert_eq!(claim_order(&mixed, "a", &["a"], 2, 0, t(20))[0].index, 1);
    }

    #[test]
    fn sharing_agents_take_the_items_they_own_oldest_first() {
        let names: Vec<String> = (0..100).map(|i| format!("item-{:03}", 99 - i)).collect();
        let cs: Vec<Candidate<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| at(n, 500, 7, 1000 + i as u64))
            .collect();
        let agents: Vec<String> = (0..5).map(|a| format!("agent-{a}")).collect();
        let live: Vec<&str> = agents.iter().map(String::as_str).collect();
        for me in &live {
            let order = claim_order(&cs, me, &live, 100, 0, t(8));
            let key = |o: &Ordered| (o.standing, cs[o.index].revision);
            assert!(
                order.windows(2).all(|w| key(&w[0]) < key(&w[1])),
                "{me}: by standing, then oldest revision first"
            );
        }
        // Spreading is kept: the agents' first choices differ.
        let firsts: std::collections::BTreeSet<usize> = live
            .iter()
            .map(|me| claim_order(&cs, me, &live, 10, 0, t(8))[0].index)
            .collect();
        assert_eq!(firsts.len(), live.len());
    }

    #[test]
    fn aged_low_priority_overtakes_fresh_high_priority() {
        // aging 1 point per 10 s: after 5000 s the low item ties with a fresh 500
        // (0 + 500) and, being older, wins; one second less and it is still behind.
        let cs = [c("low", 0, 0), c("high", 500, 5000)];
        assert_eq!(top_k(&cs, 1, 10, t(5000)), vec![0]);
        let younger = [c("low", 0, 1), c("high", 500, 5000)];
        assert_eq!(
            top_k(&younger, 1, 10, t(5000)),
            vec![1],
            "not yet aged enough"
        );
        assert_eq!(top_k(&cs, 1, 0, t(5000)), vec![1], "aging off");
    }

    #[test]
    fn backoff_time_does_not_age() {
        let mut retried = c("retried", 0, 0);
        retried.queued_since = t(1000);
        let cs = [retried, c("fresh", 10, 1000)];
        assert_eq!(top_k(&cs, 1, 1, t(1005)), vec![1]);
    }

    #[test]
    fn queued_since_is_the_latest_gate() {
        let mut wi = WorkItem::new(
            "x",
            WorkItemSpec {
                queue: Some("q".into()),
                priority: 7,
                ..Default::default()
            },
        );
        wi.metadata.creation_timestamp = Some(time(10));
        assert_eq!(queued_since(&wi), Some(t(10)));
        wi.spec.not_before = Some(time(20));
        assert_eq!(queued_since(&wi), Some(t(20)));
        wi.status = Some(WorkItemStatus {
            retry_at: Some(time(30)),
            priority: Some(900),
            ..Default::default()
        });
        assert_eq!(queued_since(&wi), Some(t(30)));
        let cand = Candidate::of(&wi);
        assert_eq!(
            cand,
            Candidate {
                name: "x",
                priority: 900,
                created: t(10),
                queued_since: t(30),
                revision: 0,
            }
        );
    }

    #[test]
    fn top_k_handles_edges() {
        let cs = [c("a", 1, 0), c("b", 2, 0)];
        assert_eq!(top_k(&cs, 0, 0, t(0)), Vec::<usize>::new());
        assert_eq!(top_k(&cs, 10, 0, t(0)), vec![1, 0]);
        assert_eq!(top_k(&[], 3, 0, t(0)), Vec::<usize>::new());
    }

    #[test]
    fn affinity_is_stable_and_spread() {
        // Fixed values: agents built at different times must agree.
        assert_eq!(affinity("a", "b"), affinity("a", "b"));
        assert_ne!(affinity("ab", "c"), affinity("a", "bc"));
        let agents: Vec<String> = (0..10).map(|i| format!("pool-{i}")).collect();
        let mut owned = [0usize; 10];
        for item in 0..10_000 {
            let name = format!("item-{item}");
            let idle: Vec<&str> = agents.iter().map(String::as_str).collect();
            let owners: Vec<usize> = (0..10)
                .filter(|&i| standing(&agents[i], &idle, &name) == 0)
                .collect();
            assert_eq!(owners.len(), 1, "exactly one owner for {name}");
            owned[owners[0]] += 1;
        }
        assert!(
            owned.iter().all(|&n| (800..1200).contains(&n)),
            "ownership spreads evenly: {owned:?}"
        );
    }

    #[test]
    fn standing_counts_the_idle_agents_ahead() {
        let idle = ["a", "b", "c", "d"];
        let mut standings: Vec<usize> = idle.iter().map(|me| standing(me, &idle, "x")).collect();
        standings.sort_unstable();
        assert_eq!(
            standings,
            vec![0, 1, 2, 3],
            "a strict order of the idle agents"
        );
        assert_eq!(
            standing("a", &["a"], "x"),
            0,
            "alone, an agent owns everything"
        );
        assert_eq!(standing("a", &[], "x"), 0);
        // An agent not in its own idle list (it just became busy) still ranks itself.
        let s = standing("e", &idle, "x");
        assert!(s <= idle.len());
    }

    #[test]
    fn defer_is_one_step_per_agent_ahead_and_bounded() {
        use std::time::Duration;
        let step = Duration::from_millis(40);
        assert_eq!(
            claim_defer(0, step),
            Duration::ZERO,
            "the owner goes at once"
        );
        assert_eq!(claim_defer(1, step), step);
        assert_eq!(claim_defer(7, step), step * 7, "no two agents share a slot");
        assert_eq!(claim_defer(usize::MAX, step), MAX_CLAIM_DEFER);
        assert_eq!(claim_defer_step(Duration::ZERO), MIN_CLAIM_DEFER_STEP);
        assert_eq!(
            claim_defer_step(Duration::from_millis(20)),
            Duration::from_millis(40)
        );
        assert_eq!(
            claim_defer_step(Duration::from_secs(9)),
            MAX_CLAIM_DEFER_STEP
        );
    }

    #[test]
    fn window_scales_with_peers() {
        assert_eq!(candidate_window(0, 8), 8);
        assert_eq!(candidate_window(3, 8), 8);
        assert_eq!(candidate_window(50, 8), 100);
        assert_eq!(candidate_window(0, 0), 1);
        assert_eq!(candidate_window(usize::MAX, 8), usize::MAX);
    }

    #[test]
    fn agent_order_keeps_priority_and_creation_second() {
        let cs = [
            c("low", 1, 0),
            c("hi", 900, 5),
            c("mid-late", 500, 3),
            c("mid-early", 500, 2),
        ];
        for me in ["a", "b", "c", "zz"] {
            let order: Vec<&str> = agent_order(&cs, me, false, 4, 0, t(10))
                .into_iter()
                .map(|i| cs[i].name)
                .collect();
            assert_eq!(order, ["hi", "mid-early", "mid-late", "low"], "agent {me}");
        }
        assert_eq!(
            agent_order(&cs, "a", false, 0, 0, t(10)),
            Vec::<usize>::new()
        );
        assert_eq!(
            agent_order(&[], "a", false, 3, 0, t(10)),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn agents_choose_different_items_within_a_band() {
        let names: Vec<String> = (0..100).map(|i| format!("item-{i:03}")).collect();
        let cs: Vec<Candidate<'_>> = names.iter().map(|n| c(n, 500, 7)).collect();
        let firsts: std::collections::BTreeSet<usize> = (0..20)
            .map(|a| agent_order(&cs, &format!("agent-{a}"), false, 10, 0, t(8))[0])
            .collect();
        assert!(
            firsts.len() >= 14,
            "20 agents' first choices among 100 equal items mostly differ: {}",
            firsts.len()
        );
        // A partial selection still returns this agent's best k, in its order.
        let all = agent_order(&cs, "agent-1", false, 100, 0, t(8));
        assert_eq!(
            agent_order(&cs, "agent-1", false, 10, 0, t(8)),
            all[..10].to_vec()
        );
    }

    #[test]
    fn in_a_backlog_each_agent_first_takes_an_item_it_owns() {
        let names: Vec<String> = (0..100).map(|i| format!("item-{i:03}")).collect();
        let cs: Vec<Candidate<'_>> = names.iter().map(|n| c(n, 500, 7)).collect();
        let agents: Vec<String> = (0..20).map(|a| format!("agent-{a}")).collect();
        let live: Vec<&str> = agents.iter().map(String::as_str).collect();
        let firsts: Vec<Ordered> = live
            .iter()
            .map(|me| claim_order(&cs, me, &live, 40, 0, t(8))[0])
            .collect();
        assert!(
            firsts.iter().all(|o| o.standing == 0),
            "each of 20 agents owns some of 100 items in its window of 40"
        );
        let distinct: std::collections::BTreeSet<usize> = firsts.iter().map(|o| o.index).collect();
        assert_eq!(
            distinct.len(),
            20,
            "so no two agents reach for the same item"
        );
        // Priority still comes first, whatever the standing.
        let mixed = [
            c("old-low", 1, 2),
            c("new-high", 900, 5),
            c("old-mid", 500, 2),
        ];
        for me in &live {
            let order: Vec<&str> = claim_order(&mixed, me, &live, 3, 0, t(10))
                .into_iter()
                .map(|o| mixed[o.index].name)
                .collect();
            assert_eq!(order, ["new-high", "old-mid", "old-low"]);
        }
        // Within a priority and creation second, standing decides, and it is reported;
        // an older second comes first whatever the standing (a busy owner's items are
        // taken by the next in line before newer ones).
        let spread: Vec<Candidate<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| c(n, 500, i as i64 / 10))
            .collect();
        let order = claim_order(&spread, "agent-3", &live, 40, 0, t(20));
        let key = |o: &Ordered| (spread[o.index].created, o.standing);
        assert!(order.windows(2).all(|w| key(&w[0]) <= key(&w[1])));
        for o in &order {
            assert_eq!(o.standing, standing("agent-3", &live, spread[o.index].name));
        }
        let window: Vec<usize> = agent_order(&spread, "agent-3", false, 40, 0, t(20));
        let mut chosen: Vec<usize> = order.iter().map(|o| o.index).collect();
        chosen.sort_unstable();
        let mut expected = window.clone();
        expected.sort_unstable();
        assert_eq!(
            chosen, expected,
            "the window is the agent's best 40 in queue order"
        );
    }

    #[test]
    fn weighted_pick_follows_weights_and_skips_empty_queues() {
        let qs = [
            WeightedQueue {
                weight: 3,
                has_work: true,
            },
            WeightedQueue {
                weight: 1,
                has_work: true,
            },
            WeightedQueue {
                weight: 100,
                has_work: false,
            },
        ];
        let mut rng = StdRng::seed_from_u64(9);
        let mut counts = [0; 3];
        for _ in 0..4000 {
            counts[weighted_queue_pick(&qs, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!((2700..3300).contains(&counts[0]), "{counts:?}");
        let empty = [WeightedQueue {
            weight: 5,
            has_work: false,
        }];
        assert_eq!(weighted_queue_pick(&empty, &mut rng), None);
        assert_eq!(weighted_queue_pick(&[], &mut rng), None);
        let zero = [WeightedQueue {
            weight: 0,
            has_work: true,
        }];
        assert_eq!(weighted_queue_pick(&zero, &mut rng), Some(0));
    }

    #[test]
    fn position_counts_those_ahead() {
        let cs = [
            c("a", 500, 10),
            c("b", 900, 20),
            c("c", 500, 5),
            c("d", 100, 0),
        ];
        assert_eq!(position_in_queue(&cs, 1, 0, t(100)), 1);
        assert_eq!(position_in_queue(&cs, 2, 0, t(100)), 2);
        assert_eq!(position_in_queue(&cs, 0, 0, t(100)), 3);
        assert_eq!(position_in_queue(&cs, 3, 0, t(100)), 4);
        assert_eq!(positions(&cs, 0, t(100)), vec![3, 1, 2, 4]);
    }

    proptest! {
        #[test]
        fn top_k_matches_a_full_sort(
            items in proptest::collection::vec((0i32..5, 0i64..5), 0..60),
            k in 0usize..70, aging in 0i64..3,
        ) {
            let names: Vec<String> = (0..items.len()).map(|i| format!("n{i:03}")).collect();
            let cs: Vec<Candidate<'_>> = items.iter().zip(&names)
                .map(|((p, created), n)| c(n, *p, *created)).collect();
            let mut all: Vec<usize> = (0..cs.len()).collect();
            all.sort_by_key(|i| rank(&cs[*i], aging, t(10)));
            all.truncate(k);
            prop_assert_eq!(top_k(&cs, k, aging, t(10)), all.clone());
            let pos = positions(&cs, aging, t(10));
            for (p, i) in all.iter().enumerate() {
                prop_assert_eq!(pos[*i], p + 1);
                prop_assert_eq!(position_in_queue(&cs, *i, aging, t(10)), p + 1);
            }
        }
    }
}
