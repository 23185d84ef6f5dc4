//! The work in its own container: no credentials reach it, signals and kills cross the
//! container boundary, and no restart of the agent, the runner or the work ever makes a
//! second accepted completion. All on the real kubelet, containerd and runc.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use triad::api::{AgentPool, OutcomeKind, Phase, WorkItem, WorkQueue};

use crate::support::{
    AGENT_CONTAINER, AGENT_IMAGE, PRIVILEGED, Role, TestNamespace, agent_pod_spec, container_id,
    container_processes, create, kubeconfig_path, node_tool, scratch_dir, start_role, wait_for,
};

const WAIT: Duration = Duration::from_secs(120);

/// Variables every container in a pod sees: the API server's Service address, set by
/// the kubelet whatever `enableServiceLinks` says. An address, not a credential.
const KUBELET_SERVICE_ENV: [&str; 8] = [
    "KUBERNETES_PORT",
    "KUBERNETES_PORT_443_TCP",
    "KUBERNETES_PORT_443_TCP_ADDR",
    "KUBERNETES_PORT_443_TCP_PORT",
    "KUBERNETES_PORT_443_TCP_PROTO",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "KUBERNETES_SERVICE_PORT_HTTPS",
];
/// What Triad gives a per-item work command (README, "Work command").
const WORK_ENV: [&str; 4] = [
    "TRIAD_ATTEMPT",
    "TRIAD_ITEM",
    "TRIAD_PAYLOAD",
    "TRIAD_REPORT",
];

fn environ(pid: i32) -> Vec<(String, String)> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

async fn running_pod(ns: &TestNamespace, pool: &str) -> Pod {
    wait_for(
        WAIT,
        "an agent pod with both containers running",
        || async {
            let pods = ns
                .api::<Pod>()
                .list(&kube::api::ListParams::default().labels(&format!("triad.dev/pool={pool}")))
                .await
                .ok()?;
            pods.items.into_iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && container_id(p, AGENT_CONTAINER).is_some()
                    && container_id(p, "work").is_some()
            })
        },
    )
    .await
}

/// The pod of the agent that holds `item`'s current claim.
async fn holder_pod(ns: &TestNamespace, item: &str) -> Pod {
    wait_for(WAIT, &format!("{item}: its holder's pod"), || async {
        let i = ns.api::<WorkItem>().get(item).await.ok()?;
        let pod = i.status?.claim?.pod?;
        ns.api::<Pod>().get(&pod).await.ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_work_holds_no_credentials_and_the_api_server_refuses_it() {
    let ns = TestNamespace::new("nocreds").await;
    let _roles = [Role::Scheduler, Role::Pools, Role::Supervisor].map(|r| start_role(&ns, r));
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    // A hostile command: looks for the token, then calls the API server as best it can
    // (with the kube client in Triad's own binary, which the test image carries: busybox
    // wget cannot speak the API server's TLS).
    // It stays a while so the test can read its environment from the node.
    // The cluster's CA is public: the work may well know it. Its client has it here.
    let ca = std::fs::read_to_string(kubeconfig_path())
        .expect("kubeconfig")
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("certificate-authority-data:")
                .map(|v| v.trim().to_owned())
        })
        .expect("the cluster CA in the kubeconfig");
    let script = r#"
token=absent
for f in /var/run/secrets/kubernetes.io/serviceaccount/token /run/secrets/kubernetes.io/serviceaccount/token; do
  [ -e "$f" ] && token="present at $f"
done
ns=${TRIAD_ITEM%%/*}
# A kubeconfig with the Service's address and no user: what the work can put together.
kc="$(dirname "$TRIAD_REPORT")/kubeconfig"
printf '{"apiVersion":"v1","kind":"Config","clusters":[{"name":"c","cluster":{"server":"https://%s:%s","certificate-authority-data":"%s"}}],"users":[{"name":"u","user":{}}],"contexts":[{"name":"x","context":{"cluster":"c","user":"u"}}],"current-context":"x"}' \
  "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT" "CA_DATA" > "$kc"
status=$(KUBECONFIG="$kc" triad status -n "$ns" 2>&1 | grep -o -m1 -E '"?code"?: ?40[13]|Forbidden|Unauthorized' | head -1 | tr -d '"')
echo "{\"progress\": {\"message\": \"probed\"}}" >> "$TRIAD_REPORT"
sleep 8
echo "{\"result\": {\"token\": \"$token\", \"status\": \"$status\"}}" >> "$TRIAD_REPORT"
"#
    .replace("CA_DATA", &ca);
    let script = script.as_str();
    create::<AgentPool>(
        &ns,
        json!({"metadata": {"name": "untrusted"}, "spec": {
            "queues": [{"name": "q"}], "replicas": 1,
            "template": {"spec": {"containers": [
                {"name": "work", "image": AGENT_IMAGE, "command": ["sh", "-c", script]}]}}}}),
    )
    .await;
    let pod = running_pod(&ns, "untrusted").await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "probe"}, "spec": {"queue": "q", "payload": {"x": 1}}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    wait_for(WAIT, "the probe ran", || async {
        let i = items.get("probe").await.ok()?;
        let message = i.status?.progress?.message?;
        (message == "probed").then_some(())
    })
    .await;

    // The agent container's token, read from the node, as a yardstick.
    let agent = container_processes(&container_id(&pod, AGENT_CONTAINER).expect("agent"));
    let token = std::fs::read_to_string(format!(
        "/proc/{}/root/var/run/secrets/kubernetes.io/serviceaccount/token",
        agent[0]
    ))
    .expect("the agent container holds a token");
    assert!(token.len() > 100, "a JWT: {token}");

    // Every process of the work container: the runner, the guard and the command.
    let work = container_processes(&container_id(&pod, "work").expect("work"));
    assert!(work.len() >= 2, "runner and work: {work:?}");
    let mut read = 0;
    for pid in &work {
        let env = environ(*pid);
        // A process that ended between the listing and the read has neither.
        if cmdline(*pid).is_empty() {
            continue;
        }
        if env.iter().any(|(k, _)| k == "TRIAD_PAYLOAD") {
            read += 1;
        }
        for (k, v) in &env {
            assert!(
                !v.contains(token.trim()),
                "{k} of {} carries the token",
                cmdline(*pid)
            );
            if k.starts_with("KUBERNETES") {
                assert!(
                    KUBELET_SERVICE_ENV.contains(&k.as_str()),
                    "undocumented {k} in {}",
                    cmdline(*pid)
                );
            }
            // Triad's own processes there (the runner, the guard) may carry their
            // internal settings; the work command gets only the documented ones.
            let triads = cmdline(*pid).starts_with("/triad/bin/triad")
                || cmdline(*pid).starts_with("/proc/self/exe");
            if k.starts_with("TRIAD") && !triads {
                assert!(
                    WORK_ENV.contains(&k.as_str()),
                    "undocumented {k} in {}",
                    cmdline(*pid)
                );
            }
        }
        let root = format!("/proc/{pid}/root/var/run/secrets/kubernetes.io/serviceaccount");
        assert!(
            !std::path::Path::new(&root).exists(),
            "{root} in the work container"
        );
    }
    assert!(
        read >= 1,
        "the work command's environment was read: {work:?}"
    );

    let done = wait_for(WAIT, "the probe finished", || async {
        let i = items.get("probe").await.ok()?;
        (i.phase() == Some(Phase::Succeeded)).then_some(i)
    })
    .await;
    let result = done
        .status
        .and_then(|s| s.result)
        .and_then(|r| r.value().cloned())
        .expect("a result");
    assert_eq!(result["token"], "absent", "{result}");
    let status = result["status"].as_str().unwrap_or_default();
    assert!(
        ["401", "403", "Forbidden", "Unauthorized"]
            .iter()
            .any(|s| status.contains(s)),
        "the API server refuses the work as anonymous: {result}"
    );
}

/// Appends to the run log: `start <item> <attempt>` when the work starts, `end …` when
/// it finishes; a killed attempt has no end line.
fn logged_script(log: &std::path::Path) -> String {
    format!(
        r#"echo "start $TRIAD_ITEM $TRIAD_ATTEMPT" >> {log}; sleep 6; echo "end $TRIAD_ITEM $TRIAD_ATTEMPT" >> {log}"#,
        log = log.display()
    )
}

fn lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Which container (or process in it) a case kills while the item runs.
#[derive(Clone, Copy, Debug)]
enum Victim {
    AgentContainer,
    Runner,
    WorkProcess,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_agent_the_runner_or_the_work_never_completes_an_item_twice() {
    let ns = TestNamespace::new("splitkill").await;
    let _roles = [Role::Scheduler, Role::Pools, Role::Supervisor].map(|r| start_role(&ns, r));
    let dir = scratch_dir("splitkill");
    let log = dir.join("runs.log");
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {
            "retry": {"maxAttempts": 5, "backoff": {"baseSeconds": 1, "maxSeconds": 2}}}}),
    )
    .await;
    create::<AgentPool>(
        &ns,
        json!({"metadata": {"name": "split"}, "spec": {
            "queues": [{"name": "q"}], "replicas": 1, "leaseSeconds": 4, "podSecurity": PRIVILEGED,
            "template": {"spec": agent_pod_spec(&logged_script(&log), json!([]))}}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    for victim in [Victim::AgentContainer, Victim::Runner, Victim::WorkProcess] {
        let name = format!("{victim:?}").to_lowercase();
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": name}, "spec": {"queue": "q"}}),
        )
        .await;
        let key = format!("{}/{name}", ns.name);
        wait_for(
            WAIT,
            &format!("{name}: the first attempt started"),
            || async {
                lines(&log)
                    .contains(&format!("start {key} 1"))
                    .then_some(())
            },
        )
        .await;
        match victim {
            Victim::AgentContainer => {
                // Read until the status shows the agent container running (it may lag
                // the container that has just claimed the item).
                let id = wait_for(WAIT, &format!("{name}: the agent container"), || async {
                    container_id(&holder_pod(&ns, &name).await, AGENT_CONTAINER)
                })
                .await;
                node_tool("crictl", &["stop", "--timeout", "0", &id]).expect("crictl stop");
            }
            Victim::Runner | Victim::WorkProcess => {
                let want = match victim {
                    Victim::Runner => "triad runner",
                    _ => "sh -c",
                };
                // The pod that holds the item, read until its status names the work
                // container that runs it (after the agent case, an earlier pod may still
                // be terminating, and a status may lag the container it describes).
                let pid = wait_for(WAIT, &format!("{name}: a {want:?} process"), || async {
                    let pod = holder_pod(&ns, &name).await;
                    let id = container_id(&pod, "work")?;
                    container_processes(&id)
                        .into_iter()
                        .find(|p| cmdline(*p).contains(want))
                })
                .await;
                // SAFETY: SIGKILL to a process of the test's own container.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
            }
        }
        let done = wait_for(WAIT, &format!("{name}: Succeeded on a retry"), || async {
            let i = items.get(&name).await.ok()?;
            (i.phase() == Some(Phase::Succeeded)).then_some(i)
        })
        .await;
        let status = done.status.expect("status");
        assert!(status.attempt >= 2, "{name}: retried: {status:?}");
        let succeeded = status
            .attempts
            .iter()
            .filter(|a| a.outcome == Some(OutcomeKind::Succeeded))
            .count();
        assert_eq!(succeeded, 1, "{name}: one accepted completion: {status:?}");
        let log = lines(&log);
        assert!(
            !log.contains(&format!("end {key} 1")),
            "{name}: the killed attempt's work went on: {log:?}"
        );
        let ends = log
            .iter()
            .filter(|l| l.starts_with(&format!("end {key} ")))
            .count();
        assert_eq!(ends, 1, "{name}: the work finished once: {log:?}");
        if matches!(victim, Victim::Runner) {
            let first = &status.attempts[0];
            assert_eq!(
                first.reason.as_deref(),
                Some("WorkContainerExited"),
                "{name}: {first:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queues_cancel_grace_reaches_the_work_across_the_container_boundary() {
    let ns = TestNamespace::new("grace").await;
    let _roles = [Role::Scheduler, Role::Pools, Role::Supervisor].map(|r| start_role(&ns, r));
    let dir = scratch_dir("grace");
    let log = dir.join("runs.log");
    // Longer than the agent's old fixed 10 s: the work's clean-up needs 12.
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {"supervision": {"cancelGraceSeconds": 30}}}),
    )
    .await;
    let script = format!(
        r#"trap 'echo term >> {log}; sleep 12; echo cleaned >> {log}; exit 0' TERM; echo started >> {log}; sleep 120 & wait"#,
        log = log.display()
    );
    create::<AgentPool>(
        &ns,
        json!({"metadata": {"name": "slow-stop"}, "spec": {
            "queues": [{"name": "q"}], "replicas": 1, "podSecurity": PRIVILEGED,
            "template": {"spec": agent_pod_spec(&script, json!([]))}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "stop-me"}, "spec": {"queue": "q"}}),
    )
    .await;
    wait_for(WAIT, "the work started", || async {
        lines(&log).contains(&"started".to_owned()).then_some(())
    })
    .await;
    let pod = running_pod(&ns, "slow-stop").await;
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or_default();
    assert!(grace > 30, "the pod's grace covers the queue's: {grace}");
    let items: Api<WorkItem> = ns.api();
    items
        .patch(
            "stop-me",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await
        .expect("cancel");
    let done = wait_for(WAIT, "the item Cancelled", || async {
        let i = items.get("stop-me").await.ok()?;
        (i.phase() == Some(Phase::Cancelled)).then_some(i)
    })
    .await;
    let log = lines(&log);
    assert!(
        log.contains(&"term".to_owned()),
        "SIGTERM reached the work: {log:?}"
    );
    assert!(
        log.contains(&"cleaned".to_owned()),
        "the work had the queue's grace to clean up, not a fixed 10 s: {log:?}"
    );
    let last = done
        .status
        .expect("status")
        .attempts
        .pop()
        .expect("an attempt");
    assert_eq!(last.outcome, Some(OutcomeKind::Cancelled), "{last:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_pool_runs_many_items_in_one_process() {
    let ns = TestNamespace::new("stream").await;
    let _roles = [Role::Scheduler, Role::Pools, Role::Supervisor].map(|r| start_role(&ns, r));
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    // One process: each item is a line; it reports progress, then ends the item with a
    // result naming its own pid and how many items it has seen.
    let script = r#"n=0; while read -r line; do n=$((n+1)); echo '{"progress": {"percent": 50}}'; case "$line" in *'"bad":true'*) echo '{"fail": {"reason": "Bad", "retryable": false}, "done": {"exitCode": 1}}';; *) echo "{\"result\": {\"pid\": $$$$, \"seen\": $n}, \"done\": {}}";; esac; done"#;
    create::<AgentPool>(
        &ns,
        json!({"metadata": {"name": "drones"}, "spec": {
            "queues": [{"name": "q"}], "replicas": 1, "workMode": "Stream",
            "template": {"spec": {"containers": [
                {"name": "work", "image": AGENT_IMAGE, "command": ["sh", "-c", script]}]}}}}),
    )
    .await;
    for i in 0..6 {
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": format!("s-{i}")}, "spec": {"queue": "q", "payload": {"i": i}}}),
        )
        .await;
    }
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "s-bad"}, "spec": {"queue": "q", "payload": {"bad": true}}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    let done = wait_for(WAIT, "all items ended", || async {
        let list = items.list(&Default::default()).await.ok()?.items;
        (list.len() == 7
            && list
                .iter()
                .all(|i| i.phase().is_some_and(|p| p.is_terminal())))
        .then_some(list)
    })
    .await;
    let mut pids = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeSet::new();
    for item in &done {
        let status = item.status.clone().expect("status");
        if item.name_any() == "s-bad" {
            assert_eq!(item.phase(), Some(Phase::Failed), "{status:?}");
            continue;
        }
        assert_eq!(item.phase(), Some(Phase::Succeeded), "{status:?}");
        let result = status
            .result
            .and_then(|r| r.value().cloned())
            .expect("result");
        pids.insert(result["pid"].as_i64().expect("pid"));
        seen.insert(result["seen"].as_i64().expect("seen"));
    }
    assert_eq!(pids.len(), 1, "one process ran every item: {pids:?}");
    assert_eq!(seen.len(), 6, "it saw each item once: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mortal_agent_ends_its_pod_and_a_fresh_one_takes_the_next_item() {
    let ns = TestNamespace::new("mortal-split").await;
    let _roles = [Role::Scheduler, Role::Pools, Role::Supervisor].map(|r| start_role(&ns, r));
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    create::<AgentPool>(
        &ns,
        json!({"metadata": {"name": "once"}, "spec": {
            "queues": [{"name": "q"}], "replicas": 1, "lifecycle": {"type": "Mortal", "maxItems": 1},
            "template": {"spec": {"containers": [
                {"name": "work", "image": AGENT_IMAGE, "command": ["true"]}]}}}}),
    )
    .await;
    for name in ["first", "second"] {
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": name}, "spec": {"queue": "q"}}),
        )
        .await;
    }
    let items: Api<WorkItem> = ns.api();
    let done = wait_for(WAIT, "both items Succeeded", || async {
        let list = items.list(&Default::default()).await.ok()?.items;
        (list.len() == 2 && list.iter().all(|i| i.phase() == Some(Phase::Succeeded)))
            .then_some(list)
    })
    .await;
    let agents: std::collections::BTreeSet<String> = done
        .iter()
        .filter_map(|i| Some(i.status.as_ref()?.claim.as_ref()?.agent.clone()))
        .collect();
    assert_eq!(agents.len(), 2, "one item per agent pod: {agents:?}");
}
