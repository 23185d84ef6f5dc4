//! The resource types as the API server serves them: validation messages, printer
//! columns, the scale subresource, status rules and garbage collection of owned items.

use std::time::Duration;

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use triad::api::{AgentPool, WorkItem, WorkRequest};

use crate::support::{TestNamespace, wait_for};

const LONG: Duration = Duration::from_secs(30);

fn item(value: serde_json::Value) -> WorkItem {
    serde_json::from_value(value).expect("valid WorkItem JSON")
}

fn invalid_message(err: kube::Error) -> String {
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "expected 422 Invalid, got {status:?}");
            status.message
        }
        other => panic!("expected an API rejection, got {other}"),
    }
}

#[tokio::test]
async fn invalid_work_items_are_rejected_with_the_field_and_the_fix() {
    let ns = TestNamespace::new("validation").await;
    let items: Api<WorkItem> = ns.api();
    let pp = PostParams::default();

    let err = items
        .create(
            &pp,
            &item(
                json!({"metadata": {"name": "too-high"}, "spec": {"queue": "q", "priority": 5000}}),
            ),
        )
        .await
        .expect_err("priority 5000 must be refused");
    let msg = invalid_message(err);
    assert!(
        msg.contains("spec.priority") && msg.contains("between 0 and 1000"),
        "{msg}"
    );

    let err = items
        .create(
            &pp,
            &item(json!({"metadata": {"name": "nowhere"}, "spec": {"priority": 10}})),
        )
        .await
        .expect_err("an item without queue or type must be refused");
    let msg = invalid_message(err);
    assert!(msg.contains("spec.queue or spec.type is required"), "{msg}");

    let err = items
        .create(&pp, &item(json!({"metadata": {"name": "neg"}, "spec": {"queue": "q", "budget": {"tokens": -5}}})))
        .await
        .expect_err("negative budgets must be refused");
    assert!(invalid_message(err).contains("spec.budget values must be non-negative"));

    let many: serde_json::Map<String, serde_json::Value> =
        (0..300).map(|i| (format!("k{i}"), json!(i))).collect();
    let err = items
        .create(
            &pp,
            &item(json!({"metadata": {"name": "wide"}, "spec": {"queue": "q", "payload": many}})),
        )
        .await
        .expect_err("a payload over the key limit must be refused");
    assert!(invalid_message(err).contains("spec.payload"));

    let ok = items
        .create(
            &pp,
            &item(json!({"metadata": {"name": "fine"}, "spec": {"queue": "q", "budget": {"tokens": 1000, "cost": 0.5}, "payload": {"repo": "triad"}}})),
        )
        .await
        .expect("a valid item is accepted");
    assert_eq!(ok.spec.priority, 500, "priority defaults to 500");

    let out = ns.kubectl(&["get", "wi", "fine"]);
    let table = String::from_utf8_lossy(&out.stdout);
    for column in [
        "QUEUE", "PRIORITY", "PHASE", "AGENT", "ATTEMPT", "PROGRESS", "AGE",
    ] {
        assert!(
            table.lines().next().unwrap_or_default().contains(column),
            "missing column {column}:\n{table}"
        );
    }
    assert!(table.contains("fine") && table.contains("500"), "{table}");
}

#[tokio::test]
async fn terminal_phases_and_claim_epochs_cannot_go_back() {
    let ns = TestNamespace::new("status-rules").await;
    let items: Api<WorkItem> = ns.api();
    items
        .create(
            &PostParams::default(),
            &item(json!({"metadata": {"name": "done"}, "spec": {"queue": "q"}})),
        )
        .await
        .expect("create");
    let status = |v: serde_json::Value| Patch::Merge(json!({"status": v}));
    let pp = PatchParams::default();
    items
        .patch_status(
            "done",
            &pp,
            &status(json!({"phase": "Running", "claim": {"agent": "a", "epoch": 2}})),
        )
        .await
        .expect("claim");
    let err = items
        .patch_status(
            "done",
            &pp,
            &status(json!({"claim": {"agent": "b", "epoch": 1}})),
        )
        .await
        .expect_err("an epoch must never decrease");
    assert!(invalid_message(err).contains("status.claim.epoch may never decrease"));

    items
        .patch_status("done", &pp, &status(json!({"phase": "Succeeded"})))
        .await
        .expect("complete");
    let err = items
        .patch_status("done", &pp, &status(json!({"phase": "Running"})))
        .await
        .expect_err("Succeeded is terminal");
    assert!(invalid_message(err).contains("terminal"));
}

#[tokio::test]
async fn kubectl_scale_sets_the_pool_replicas() {
    let ns = TestNamespace::new("scale").await;
    let pools: Api<AgentPool> = ns.api();
    let pool: AgentPool = serde_json::from_value(json!({
        "metadata": {"name": "drones"},
        "spec": {
            "queues": [{"name": "drone"}],
            "template": {"spec": {"containers": [{"name": "agent", "image": "triad", "command": ["true"]}]}}
        }
    }))
    .expect("pool");
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool");

    let out = ns.kubectl(&["scale", "ap/drones", "--replicas=3"]);
    assert!(
        out.status.success(),
        "kubectl scale: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pools.get("drones").await.expect("get").spec.replicas,
        Some(3)
    );

    let out = ns.kubectl(&["get", "ap"]);
    let table = String::from_utf8_lossy(&out.stdout);
    for column in ["QUEUES", "DESIRED", "READY", "BUSY"] {
        assert!(table.contains(column), "missing column {column}:\n{table}");
    }
}

#[tokio::test]
async fn deleting_a_request_garbage_collects_its_items() {
    let ns = TestNamespace::new("gc").await;
    let requests: Api<WorkRequest> = ns.api();
    let items: Api<WorkItem> = ns.api();
    let request: WorkRequest = serde_json::from_value(json!({
        "metadata": {"name": "build"},
        "spec": {"tasks": [{"name": "compile", "queue": "q"}]}
    }))
    .expect("request");
    let request = requests
        .create(&PostParams::default(), &request)
        .await
        .expect("create request");
    let owner = request.controller_owner_ref(&()).expect("owner reference");
    let mut owned = item(json!({"metadata": {"name": "build-compile"}, "spec": {"queue": "q"}}));
    owned.meta_mut().owner_references = Some(vec![owner]);
    items
        .create(&PostParams::default(), &owned)
        .await
        .expect("create owned item");

    requests
        .delete("build", &Default::default())
        .await
        .expect("delete request");
    wait_for(
        Duration::from_secs(60),
        "the garbage collector to delete the owned item",
        || {
            let items = items.clone();
            async move {
                items
                    .get_opt("build-compile")
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        items
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .iter()
            .all(|i| i.name_any() != "build-compile")
    );
}

/// What `kubectl get wi`, `kubectl get wi -w` and a phase field selector show for a
/// fresh item: Queued, by the CRD's status default, with no write by Triad (the fast
/// path stays one create and one claim). An item that waits on another still turns
/// Pending once the scheduler sees it.
#[tokio::test]
async fn a_fresh_item_shows_queued_without_a_write() {
    use futures::StreamExt;
    use kube::api::{ApiResource, DynamicObject, WatchEvent, WatchParams};
    let ns = TestNamespace::new("fresh-phase").await;
    let raw: Api<DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &ApiResource::erase::<WorkItem>(&()),
    );
    let mut watch = raw
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    let (_scheduler, _) = crate::support::start_role(&ns, crate::support::Role::Scheduler);
    crate::support::create::<triad::api::WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    let fresh = items
        .create(
            &PostParams::default(),
            &item(json!({"metadata": {"name": "fresh"}, "spec": {"queue": "q"}})),
        )
        .await
        .expect("create");
    items
        .create(
            &PostParams::default(),
            &item(json!({"metadata": {"name": "after"},
                         "spec": {"queue": "q", "dependsOn": ["fresh"]}})),
        )
        .await
        .expect("create");

    // The watch's first event already carries the phase.
    let obj = loop {
        let event = tokio::time::timeout(LONG, watch.next())
            .await
            .expect("a watch event")
            .expect("stream open")
            .expect("event");
        match event {
            WatchEvent::Added(obj) => break obj,
            WatchEvent::Bookmark(_) => continue,
            other => panic!("expected ADDED, got {other:?}"),
        }
    };
    assert_eq!(obj.name_any(), "fresh");
    assert_eq!(obj.data.pointer("/status/phase"), Some(&json!("Queued")));

    // The waiting dependent turns Pending; the fresh item keeps Queued, unwritten.
    wait_for(LONG, "the dependent item Pending", || async {
        let out = ns.kubectl(&["get", "wi", "after", "-o", "jsonpath={.status.phase}"]);
        (String::from_utf8_lossy(&out.stdout) == "Pending").then_some(())
    })
    .await;
    let table = ns.kubectl(&["get", "wi", "fresh"]);
    let table = String::from_utf8_lossy(&table.stdout);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    let column = header
        .iter()
        .position(|h| *h == "PHASE")
        .expect("PHASE column");
    assert_eq!(row.get(column), Some(&"Queued"), "{table}");
    let selected = ns.kubectl(&[
        "get",
        "wi",
        "--field-selector",
        "status.phase=Queued",
        "-o",
        "name",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&selected.stdout).trim(),
        "workitem.triad.dev/fresh"
    );
    assert_eq!(
        items.get("fresh").await.expect("get").resource_version(),
        fresh.resource_version(),
        "nobody wrote the fresh item"
    );
}
