//! Dependency cycles among existing WorkItems.
//!
//! A WorkRequest's graph is checked whole before any item exists ([`super::graph`]),
//! but items a user applies directly can name each other in `dependsOn` one at a time,
//! so a cycle only exists once its last edge arrives, and nothing ever runs it. The
//! scheduler asks [`find`] about an item only when the item would wait on a
//! dependency, and the walk looks at a bounded number of items, so a large backlog of
//! healthy dependency chains costs a bounded amount per decision.
//!
//! Only items that themselves wait on dependencies pass the wait on: a running or
//! finished dependency, or one that does not exist, ends the walk there. Which items
//! those are is the caller's `waits_on` function, so this module stays free of phases.

use std::collections::HashMap;

/// Condition reason for an item on a cycle.
pub const DEPENDENCY_CYCLE: &str = "DependencyCycle";
/// Condition reason for an item that is not on a cycle but waits on one.
pub const DEPENDS_ON_CYCLE: &str = "DependsOnCycle";

/// Names shown in a message before the middle of a long path is elided: a condition
/// message has a size limit, and a person reads the first few hops anyway.
const SHOWN: usize = 12;

/// What [`find`] found from one item. Paths read in `dependsOn` direction: "a → b"
/// means a depends on b.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemCycle {
    /// The item is on the cycle: `path` starts and ends with it.
    On { path: Vec<String> },
    /// The item waits on a cycle it is not part of: `via` leads from the item to the
    /// first cycle member reached (both included), and `cycle` starts and ends there.
    Behind {
        via: Vec<String>,
        cycle: Vec<String>,
    },
}

impl ItemCycle {
    /// The condition and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ItemCycle::On { .. } => DEPENDENCY_CYCLE,
            ItemCycle::Behind { .. } => DEPENDS_ON_CYCLE,
        }
    }

    /// The cycle, starting and ending with the same item.
    pub fn cycle(&self) -> &[String] {
        match self {
            ItemCycle::On { path } => path,
            ItemCycle::Behind { cycle, .. } => cycle,
        }
    }

    /// The condition message: the path and how to fix it, in the words the
    /// WorkRequest-level cycle uses.
    pub fn message(&self) -> String {
        match self {
            ItemCycle::On { path } => format!(
                "dependency cycle: {}; remove one of these dependsOn entries",
                render(path)
            ),
            ItemCycle::Behind { via, cycle } => format!(
                "waits on dependency cycle {} (via {}); remove one of the cycle's dependsOn entries",
                render(cycle),
                render(via)
            ),
        }
    }
}

/// `a → b → c`, with the middle of long paths elided to keep messages bounded.
pub fn render(path: &[String]) -> String {
    if path.len() <= SHOWN + 1 {
        return path.join(" → ");
    }
    let head = &path[..SHOWN - 1];
    let last = &path[path.len() - 1];
    format!(
        "{} → … ({} more) → {last}",
        head.join(" → "),
        path.len() - SHOWN
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Mark {
    Open,
    Done,
}

/// Whether `start` is on, or waits on, a dependency cycle. `waits_on(name)` is what an
/// item still waits for: its `dependsOn` while it waits on dependencies, nothing for
/// an item that runs, finished or does not exist. At most `limit` items are looked at
/// (the walk stops expanding past that and may then miss a cycle).
///
/// Being on a cycle wins over waiting on another one: the fix for such an item is its
/// own `dependsOn`. The result is deterministic for a given graph (dependencies are
/// followed in listed order), so the scheduler can compare it with what it wrote.
pub fn find<'a>(
    start: &'a str,
    waits_on: impl Fn(&str) -> &'a [String],
    limit: usize,
) -> Option<ItemCycle> {
    // Iterative depth-first search: a long chain cannot overflow the stack. A back edge
    // to the root is the only way the root can be on a cycle: every item that reaches
    // the root is expanded while the root is still open.
    let mut mark: HashMap<&'a str, Mark> = HashMap::new();
    mark.insert(start, Mark::Open);
    let mut stack: Vec<(&'a str, &'a [String], usize)> = vec![(start, waits_on(start), 0)];
    let mut behind = None;
    while let Some(&(v, deps, next)) = stack.last() {
        let Some(w) = deps.get(next).map(String::as_str) else {
            mark.insert(v, Mark::Done);
            stack.pop();
            continue;
        };
        if let Some(top) = stack.last_mut() {
            top.2 += 1;
        }
        match mark.get(w) {
            None if mark.len() < limit => {
                mark.insert(w, Mark::Open);
                stack.push((w, waits_on(w), 0));
            }
            None | Some(Mark::Done) => {}
            Some(Mark::Open) => {
                let from = stack.iter().position(|(u, ..)| *u == w).unwrap_or(0);
                let names = |range: &[(&str, &[String], usize)]| -> Vec<String> {
                    range.iter().map(|(u, ..)| (*u).to_owned()).collect()
                };
                let mut cycle = names(&stack[from..]);
                cycle.push(w.to_owned());
                if from == 0 {
                    return Some(ItemCycle::On { path: cycle });
                }
                behind.get_or_insert_with(|| ItemCycle::Behind {
                    via: names(&stack[..=from]),
                    cycle,
                });
            }
        }
    }
    behind
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashSet};

    type Graph = BTreeMap<String, Vec<String>>;

    fn graph(edges: &[(&str, &[&str])]) -> Graph {
        edges
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn run(g: &Graph, start: &str) -> Option<ItemCycle> {
        find(start, |n| g.get(n).map_or(&[][..], Vec::as_slice), 1000)
    }

    fn on(path: &[&str]) -> Option<ItemCycle> {
        Some(ItemCycle::On {
            path: path.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn behind(via: &[&str], cycle: &[&str]) -> Option<ItemCycle> {
        Some(ItemCycle::Behind {
            via: via.iter().map(|s| s.to_string()).collect(),
            cycle: cycle.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn self_dependency() {
        let g = graph(&[("a", &["a"])]);
        assert_eq!(run(&g, "a"), on(&["a", "a"]));
    }

    #[test]
    fn two_cycle_from_either_side() {
        let g = graph(&[("a", &["b"]), ("b", &["a"])]);
        assert_eq!(run(&g, "a"), on(&["a", "b", "a"]));
        assert_eq!(run(&g, "b"), on(&["b", "a", "b"]));
    }

    #[test]
    fn three_cycle() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        assert_eq!(run(&g, "a"), on(&["a", "b", "c", "a"]));
        assert_eq!(run(&g, "c"), on(&["c", "a", "b", "c"]));
    }

    #[test]
    fn chain_into_a_cycle_waits_on_it() {
        let g = graph(&[("a", &["b"]), ("b", &["a"]), ("c", &["a"]), ("d", &["c"])]);
        assert_eq!(run(&g, "c"), behind(&["c", "a"], &["a", "b", "a"]));
        assert_eq!(
            run(&g, "d"),
            behind(&["d", "c", "a"], &["a", "b", "a"]),
            "through a chain"
        );
    }

    #[test]
    fn being_on_a_cycle_wins_over_waiting_on_another() {
        // a's first dependency leads into x ⇄ y; its second closes a → b → a.
        let g = graph(&[
            ("a", &["x", "b"]),
            ("b", &["a"]),
            ("x", &["y"]),
            ("y", &["x"]),
        ]);
        assert_eq!(run(&g, "a"), on(&["a", "b", "a"]));
    }

    #[test]
    fn diamond_without_a_cycle() {
        let g = graph(&[("d", &["b", "c"]), ("b", &["a"]), ("c", &["a"]), ("a", &[])]);
        for n in ["a", "b", "c", "d"] {
            assert_eq!(run(&g, n), None, "{n}");
        }
    }

    #[test]
    fn missing_and_finished_dependencies_end_the_walk() {
        // "done" depends on a, but it finished, so it passes no wait on (no edges).
        let g = graph(&[("a", &["done", "ghost"])]);
        assert_eq!(run(&g, "a"), None);
    }

    #[test]
    fn duplicate_entries_are_harmless() {
        let g = graph(&[("a", &["b", "b"]), ("b", &[])]);
        assert_eq!(run(&g, "a"), None);
        let g = graph(&[("a", &["b", "b"]), ("b", &["a"])]);
        assert_eq!(run(&g, "a"), on(&["a", "b", "a"]));
    }

    fn chain(n: usize, closed: bool) -> Graph {
        (0..n)
            .map(|i| {
                let dep = if i + 1 < n {
                    vec![format!("t{}", i + 1)]
                } else if closed {
                    vec!["t0".to_string()]
                } else {
                    vec![]
                };
                (format!("t{i}"), dep)
            })
            .collect()
    }

    #[test]
    fn long_chain_does_not_overflow() {
        let g = chain(50_000, false);
        assert_eq!(
            find(
                "t0",
                |n| g.get(n).map_or(&[][..], Vec::as_slice),
                usize::MAX
            ),
            None
        );
        let g = chain(50_000, true);
        let found = find(
            "t0",
            |n| g.get(n).map_or(&[][..], Vec::as_slice),
            usize::MAX,
        );
        assert!(
            matches!(&found, Some(ItemCycle::On { path }) if path.len() == 50_001),
            "{found:?}"
        );
    }

    #[test]
    fn the_walk_is_bounded() {
        let g = chain(100, true);
        let looked = std::cell::Cell::new(0);
        let found = find(
            "t0",
            |n| {
                looked.set(looked.get() + 1);
                g.get(n).map_or(&[][..], Vec::as_slice)
            },
            10,
        );
        assert_eq!(found, None, "the cycle closes beyond the limit");
        assert_eq!(looked.get(), 10);
        assert_eq!(
            find("t0", |n| g.get(n).map_or(&[][..], Vec::as_slice), 100).map(|c| c.cycle().len()),
            Some(101)
        );
    }

    #[test]
    fn messages_name_the_path_and_the_fix() {
        let g = graph(&[("a", &["b"]), ("b", &["a"]), ("c", &["a"])]);
        let a = run(&g, "a").unwrap();
        assert_eq!(a.reason(), "DependencyCycle");
        assert_eq!(
            a.message(),
            "dependency cycle: a → b → a; remove one of these dependsOn entries"
        );
        let c = run(&g, "c").unwrap();
        assert_eq!(c.reason(), "DependsOnCycle");
        assert_eq!(
            c.message(),
            "waits on dependency cycle a → b → a (via c → a); remove one of the cycle's dependsOn entries"
        );
        assert_eq!(c.cycle(), ["a", "b", "a"]);
    }

    #[test]
    fn long_paths_are_elided_in_messages() {
        let path: Vec<String> = (0..300)
            .map(|i| format!("{i}-{}", "x".repeat(250)))
            .collect();
        let m = ItemCycle::On { path: path.clone() }.message();
        assert!(m.chars().count() < 4000, "{}", m.len());
        assert!(m.contains("(288 more)"), "{m}");
        assert!(m.ends_with(&format!(
            "{}; remove one of these dependsOn entries",
            path[299]
        )));
        let short: Vec<String> = (0..13).map(|i| i.to_string()).collect();
        assert_eq!(render(&short), short.join(" → "), "13 names fit");
    }

    /// Whether `to` is reachable from `from` in one or more steps.
    fn reaches(g: &Graph, from: &str, to: &str) -> bool {
        let mut seen = HashSet::new();
        let mut todo: Vec<&str> = g
            .get(from)
            .map_or(vec![], |d| d.iter().map(String::as_str).collect());
        while let Some(n) = todo.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n) {
                todo.extend(g.get(n).into_iter().flatten().map(String::as_str));
            }
        }
        false
    }

    fn is_path(g: &Graph, path: &[String]) -> bool {
        path.windows(2)
            .all(|w| g.get(&w[0]).is_some_and(|d| d.contains(&w[1])))
    }

    proptest! {
        /// Against a brute-force oracle: on a cycle iff the item reaches itself; behind
        /// one iff it reaches an item that reaches itself; every reported path is made of
        /// real edges.
        #[test]
        fn agrees_with_reachability(
            edges in proptest::collection::vec(proptest::collection::vec(0usize..10, 0..3), 1..10),
            start in 0usize..10,
        ) {
            let g: Graph = edges.iter().enumerate().map(|(i, d)| {
                (format!("n{i}"), d.iter().map(|j| format!("n{j}")).collect())
            }).collect();
            let start = format!("n{}", start % edges.len());
            let on_cycle = reaches(&g, &start, &start);
            let behind_cycle = !on_cycle && g.keys().any(|n| reaches(&g, &start, n) && reaches(&g, n, n));
            match run(&g, &start) {
                Some(ItemCycle::On { path }) => {
                    prop_assert!(on_cycle);
                    prop_assert_eq!(path.first(), Some(&start));
                    prop_assert_eq!(path.last(), Some(&start));
                    prop_assert!(is_path(&g, &path));
                }
                Some(ItemCycle::Behind { via, cycle }) => {
                    prop_assert!(behind_cycle);
                    prop_assert_eq!(via.first(), Some(&start));
                    prop_assert_eq!(via.last(), cycle.first());
                    prop_assert_eq!(cycle.first(), cycle.last());
                    prop_assert!(is_path(&g, &via) && is_path(&g, &cycle));
                }
                None => prop_assert!(!on_cycle && !behind_cycle),
            }
        }
    }
}
