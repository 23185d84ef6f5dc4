//! CRD validation fuzzed against a real API server. CEL rules run only there, so every
//! object goes in with server-side dry run (nothing is stored) and the verdict is
//! compared with the corpus (`tests/corpus/crds/`) and with the Rust oracle of the
//! documented bounds (`tests/fuzz/crd_model.rs`).
//!
//! Beyond "accepted ⇔ oracle-valid", an accepted object must decode with the
//! operator's typed client, alone and in a list (an object the API stores but Triad
//! cannot read breaks every list of its kind; schemaless fields nested too deep decode as
//! a marker the roles refuse), and an accepted WorkRequest that the scheduler can plan
//! must plan items the API server accepts too.

use std::time::Instant;

use futures::{StreamExt, stream};
use kube::Resource;
use kube::api::PostParams;
use kube::core::Request;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use triad::agent::report::cut;
use triad::api::{AgentPool, WorkItem, WorkQueue, WorkRequest};
use triad::core::graph;

use crate::crd_model::{
    Kind, check_free_forms, crd_corpus, generate, planned_item_json, violations,
};
use crate::support::TestNamespace;

/// Dry-run creates in flight at once: enough to keep the test well under its budget on
/// two cores without crowding the API server for tests running beside it.
const PARALLEL: usize = 8;
/// Random objects per kind.
const PER_KIND: usize = 100;
/// Planned items of one accepted request that are checked (each task's first).
const ITEMS_PER_REQUEST: usize = 6;

#[derive(Debug)]
enum Verdict {
    Accepted(String),
    Rejected { code: u16, message: String },
}

async fn dry_run(ns: &TestNamespace, kind: Kind, object: &Value) -> Verdict {
    let path = match kind {
        Kind::WorkItem => WorkItem::url_path(&(), Some(&ns.name)),
        Kind::WorkRequest => WorkRequest::url_path(&(), Some(&ns.name)),
        Kind::WorkQueue => WorkQueue::url_path(&(), Some(&ns.name)),
        Kind::AgentPool => AgentPool::url_path(&(), Some(&ns.name)),
    };
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    // Raw bytes and a raw response: the fuzzer sends what the typed structs cannot
    // express, and decoding the answer is itself under test.
    let body = serde_json::to_vec(object).expect("serialize");
    let request = Request::new(path).create(&pp, body).expect("build request");
    match ns.client.request_text(request).await {
        Ok(text) => Verdict::Accepted(text),
        Err(kube::Error::Api(status)) => Verdict::Rejected {
            code: status.code,
            message: status.message,
        },
        Err(e) => panic!("dry-run create failed outside the API: {e}"),
    }
}

/// Problems with an accepted object: it must decode (its schemaless fields too deep to
/// act on as the marker the roles refuse), and (requests) plan items the API server
/// accepts.
async fn check_accepted(ns: &TestNamespace, kind: Kind, sent: &Value, stored: &str) -> Vec<String> {
    if let Err(e) = kind.decode(stored) {
        return vec![format!("accepted, but the operator cannot decode it: {e}")];
    }
    if let Err(e) = check_free_forms(kind, sent, stored) {
        return vec![format!("accepted, but {e}")];
    }
    if kind != Kind::WorkRequest {
        return vec![];
    }
    let request: WorkRequest = serde_json::from_str(stored).expect("decoded above");
    let Ok(items) = graph::plan("fuzz", &request.spec) else {
        return vec![];
    };
    let mut seen_tasks = std::collections::HashSet::new();
    let sample: Vec<_> = items
        .iter()
        .filter(|i| seen_tasks.insert(i.task.clone()))
        .take(ITEMS_PER_REQUEST)
        .collect();
    let mut problems = Vec::new();
    for item in sample {
        if let Verdict::Rejected { message, .. } =
            dry_run(ns, Kind::WorkItem, &planned_item_json(item)).await
        {
            problems.push(format!(
                "accepted and planned, but its item {} is refused: {message}",
                item.name
            ));
        }
    }
    problems
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 1500 {
        return s;
    }
    format!("{}… ({} bytes)", cut(&s, 1500), s.len())
}

#[tokio::test]
async fn crd_fuzz_corpus_objects_get_their_recorded_verdict() {
    let ns = TestNamespace::new("crd-corpus").await;
    let corpus = crd_corpus();
    let findings: Vec<String> = stream::iter(&corpus)
        .map(|case| {
            let ns = &ns;
            async move {
                let mut problems = Vec::new();
                match dry_run(ns, case.kind, &case.object).await {
                    Verdict::Accepted(stored) if case.valid => {
                        problems.extend(check_accepted(ns, case.kind, &case.object, &stored).await);
                    }
                    Verdict::Accepted(_) => problems.push(format!(
                        "accepted; expected a refusal naming {:?}",
                        case.error
                    )),
                    Verdict::Rejected { code, message } if case.valid => {
                        problems.push(format!("refused with {code}: {message}"));
                    }
                    Verdict::Rejected { code, message } => {
                        if code != 422 || !message.contains(&case.error) {
                            problems.push(format!(
                                "refused with {code}, message lacks {:?}: {message}",
                                case.error
                            ));
                        }
                    }
                }
                problems
                    .into_iter()
                    .map(|p| format!("{}: {p}", case.file))
                    .collect::<Vec<_>>()
            }
        })
        .buffer_unordered(PARALLEL)
        .flat_map(stream::iter)
        .collect()
        .await;
    assert!(
        findings.is_empty(),
        "{} of {} corpus objects:\n{}",
        findings.len(),
        corpus.len(),
        findings.join("\n")
    );
}

#[tokio::test]
async fn crd_fuzz_random_objects_match_the_oracle() {
    let seed = std::env::var("TRIAD_FUZZ_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("TRIAD_FUZZ_SEED is a u64"))
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("crd fuzz seed {seed} (TRIAD_FUZZ_SEED={seed} replays this run)");
    let mut rng = StdRng::seed_from_u64(seed);
    let objects: Vec<(Kind, Value)> = Kind::ALL
        .into_iter()
        .flat_map(|kind| std::iter::repeat_n(kind, PER_KIND))
        .enumerate()
        .map(|(i, kind)| (kind, generate(&mut rng, kind, &format!("f-{i}"))))
        .collect();

    let ns = TestNamespace::new("crd-fuzz").await;
    let started = Instant::now();
    let results: Vec<(Kind, bool, Vec<String>)> = stream::iter(&objects)
        .map(|(kind, object)| {
            let ns = &ns;
            async move {
                let expected = violations(*kind, object);
                let verdict = dry_run(ns, *kind, object).await;
                let mut problems = Vec::new();
                let accepted = matches!(verdict, Verdict::Accepted(_));
                match verdict {
                    Verdict::Accepted(stored) => {
                        if !expected.is_empty() {
                            problems
                                .push(format!("accepted, but the oracle finds {expected:?} wrong"));
                        }
                        problems.extend(check_accepted(ns, *kind, object, &stored).await);
                    }
                    Verdict::Rejected { code, message } => {
                        if code >= 500 {
                            problems.push(format!("server error {code}: {message}"));
                        } else if code != 422 {
                            problems.push(format!("refused with {code}, not 422: {message}"));
                        } else if expected.is_empty() {
                            problems.push(format!("refused, but the oracle accepts it: {message}"));
                        } else if !expected
                            .iter()
                            .any(|field| message.contains(field.as_str()))
                        {
                            problems.push(format!(
                                "refused without naming any of {expected:?}: {message}"
                            ));
                        }
                    }
                }
                let problems = problems
                    .into_iter()
                    .map(|p| format!("{kind:?} {p}\n  object: {}", short(object)))
                    .collect();
                (*kind, accepted, problems)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;

    for kind in Kind::ALL {
        let of_kind = results.iter().filter(|(k, ..)| *k == kind);
        let accepted = of_kind.clone().filter(|(_, a, _)| *a).count();
        eprintln!(
            "{kind:?}: {accepted} accepted, {} refused",
            of_kind.count() - accepted
        );
    }
    eprintln!("{} objects in {:.1?}", objects.len(), started.elapsed());
    let findings: Vec<&String> = results.iter().flat_map(|(_, _, p)| p).collect();
    assert!(
        findings.is_empty(),
        "seed {seed}: {} findings (TRIAD_FUZZ_SEED={seed} replays):\n{}",
        findings.len(),
        findings
            .iter()
            .take(15)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
