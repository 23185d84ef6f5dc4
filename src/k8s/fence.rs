//! The claim and the fence: the only ways an agent (or the supervisor, fencing one out)
//! writes to a WorkItem's status.
//!
//! - A claim is a merge patch of `/status` that carries the item's `resourceVersion`:
//!   the API server applies it only to the version the agent looked at, so of many
//!   agents racing for one item exactly one wins and the rest get 409.
//! - Every later write by the holder is a JSON Patch whose leading `test` operations
//!   check `claim.agent`, `claim.epoch` and `phase == Running`. Once the claim moved on
//!   (a fence-out raised the epoch, or the item finished) the whole patch is refused, so
//!   a stale agent can never complete or corrupt an item.

use json_patch::{
    AddOperation, Patch as JsonPatch, PatchOperation, TestOperation, jsonptr::PointerBuf,
};
use kube::Api;
use kube::api::Patch;
use serde_json::{Value, json};

use crate::api::{Claim, Outcome, Phase, WorkItem};

use super::managers;

/// Who is claiming: the agent's name (its pod's name), its pod and its Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    pub agent: String,
    pub pod: Option<String>,
    pub lease: Option<String>,
}

/// The holder's proof of ownership, taken from the claimed item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub agent: String,
    pub epoch: i64,
}

impl Fence {
    pub fn of(item: &WorkItem) -> Option<Fence> {
        let claim = item.status.as_ref()?.claim.as_ref()?;
        Some(Fence {
            agent: claim.agent.clone(),
            epoch: claim.epoch,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The item changed since we looked (another agent won, or the scheduler moved it).
    #[error("lost the race for the item")]
    Conflict,
    #[error("item is gone")]
    NotFound,
    #[error(transparent)]
    Api(kube::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// Our claim is no longer the item's claim: stop, write nothing more.
    #[error("fenced out: the item's claim is no longer ours")]
    Fenced,
    /// The API server refused the content (for example a CEL rule).
    #[error("refused: {0}")]
    Invalid(String),
    #[error(transparent)]
    Api(kube::Error),
}

/// Claims `item` at the resourceVersion it was seen with: epoch + 1, attempt + 1,
/// phase Running; per-attempt fields from the previous attempt are cleared.
pub async fn claim(
    api: &Api<WorkItem>,
    item: &WorkItem,
    who: &AgentIdentity,
) -> Result<WorkItem, ClaimError> {
    let status = item.status.clone().unwrap_or_default();
    let now = super::now();
    let claim = Claim {
        agent: who.agent.clone(),
        pod: who.pod.clone(),
        epoch: item.epoch() + 1,
        acquired_at: Some(now.clone()),
        lease: who.lease.clone(),
    };
    let changes = json!({
        "phase": Phase::Running,
        "attempt": status.attempt + 1,
        "claim": claim,
        "startedAt": now,
        "progress": {"updatedAt": now},
        "outcome": null,
        "retryAt": null,
        "waiting": null,
        "usage": null,
        "result": null,
        "finishedAt": null,
    });
    status_at_version(api, item, managers::AGENT, changes).await
}

/// Merges `changes` into `item`'s status only if the item is still at the
/// resourceVersion it was read at: the compare-and-swap behind claims and fence-outs.
async fn status_at_version(
    api: &Api<WorkItem>,
    item: &WorkItem,
    manager: &str,
    changes: Value,
) -> Result<WorkItem, ClaimError> {
    let name = item.metadata.name.as_deref().ok_or(ClaimError::NotFound)?;
    let rv = item
        .metadata
        .resource_version
        .as_deref()
        .ok_or(ClaimError::Conflict)?;
    let body = json!({"metadata": {"resourceVersion": rv}, "status": changes});
    api.patch_status(name, &super::patch_params(manager), &Patch::Merge(&body))
        .await
        .map_err(claim_error)
}

fn claim_error(err: kube::Error) -> ClaimError {
    match err {
        kube::Error::Api(s) if s.code == 409 => ClaimError::Conflict,
        kube::Error::Api(s) if s.code == 404 => ClaimError::NotFound,
        other => ClaimError::Api(other),
    }
}

fn pointer(path: &str) -> PointerBuf {
    // Paths here are fixed literals ("/status/..."), always valid pointers.
    PointerBuf::parse(path).unwrap_or_default()
}

/// `test` operations that hold only while `fence` is the item's current, running claim.
pub fn fence_tests(fence: &Fence) -> Vec<PatchOperation> {
    vec![
        PatchOperation::Test(TestOperation {
            path: pointer("/status/claim/agent"),
            value: json!(fence.agent),
        }),
        PatchOperation::Test(TestOperation {
            path: pointer("/status/claim/epoch"),
            value: json!(fence.epoch),
        }),
        PatchOperation::Test(TestOperation {
            path: pointer("/status/phase"),
            value: json!(Phase::Running),
        }),
    ]
}

/// An `add` of `/status/<field>` (creates or replaces).
pub fn set(field: &str, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(&format!("/status/{field}")),
        value,
    })
}

/// Applies `ops` to the item's status only if `fence` still holds.
pub async fn fenced_patch(
    api: &Api<WorkItem>,
    name: &str,
    fence: &Fence,
    ops: Vec<PatchOperation>,
) -> Result<WorkItem, FenceError> {
    let mut all = fence_tests(fence);
    all.extend(ops);
    let patch: Patch<()> = Patch::Json(JsonPatch(all));
    match api
        .patch_status(name, &super::patch_params(managers::AGENT), &patch)
        .await
    {
        Ok(item) => Ok(item),
        // A missing item means someone deleted it: our claim is gone.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Err(FenceError::Fenced),
        // A failed `test` comes back as a bare 422 ("the server rejected our request
        // due to an error in our request"), indistinguishable from a CEL refusal, so
        // look at the item: if the claim moved on we were fenced, else the content
        // was refused.
        Err(kube::Error::Api(s)) if s.code == 422 => match api.get_opt(name).await {
            Ok(Some(current)) if still_holds(&current, fence) => {
                Err(FenceError::Invalid(s.message))
            }
            Ok(_) => Err(FenceError::Fenced),
            Err(e) => Err(FenceError::Api(e)),
        },
        Err(other) => Err(FenceError::Api(other)),
    }
}

/// True while `fence` is the item's current claim on a Running item.
pub fn still_holds(item: &WorkItem, fence: &Fence) -> bool {
    Fence::of(item).as_ref() == Some(fence) && item.phase() == Some(Phase::Running)
}

/// The completion: phase Succeeded with the outcome and result, under the fence.
/// Exactly one completion per item can win: it ends the `phase == Running` test.
pub fn complete_ops(
    item: &WorkItem,
    result: Option<Value>,
    usage: Value,
    attempt_record: Value,
) -> Vec<PatchOperation> {
    let now = super::now();
    let status = item.status.clone().unwrap_or_default();
    let outcome = Outcome {
        kind: crate::api::OutcomeKind::Succeeded,
        reason: None,
        message: None,
        attempt: status.attempt,
        epoch: item.epoch(),
        at: Some(now.clone()),
    };
    let mut ops = vec![
        set("outcome", json!(outcome)),
        set("usage", usage),
        set("finishedAt", json!(now)),
        set("attempts", attempt_record),
    ];
    if let Some(result) = result {
        ops.push(set("result", result));
    }
    // The phase flips last so a refused field above refuses the completion with it.
    ops.push(set("phase", json!(Phase::Succeeded)));
    ops
}

/// The item's claim after a fence-out: the same holder on record, the epoch one higher,
/// so every write made under the old epoch fails its `test`.
pub fn fenced_out_claim(item: &WorkItem) -> Claim {
    let mut claim = item
        .status
        .as_ref()
        .and_then(|s| s.claim.clone())
        .unwrap_or_default();
    claim.epoch += 1;
    claim
}

/// A fence-out by the supervisor: raises the epoch (so every write of the old holder is
/// refused from now on) and records why, at the resourceVersion it observed.
pub async fn fence_out(
    api: &Api<WorkItem>,
    item: &WorkItem,
    outcome: Outcome,
) -> Result<WorkItem, ClaimError> {
    let claim = fenced_out_claim(item);
    let outcome = Outcome {
        epoch: claim.epoch,
        ..outcome
    };
    let changes = json!({"claim": claim, "outcome": outcome});
    status_at_version(api, item, managers::SUPERVISOR, changes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_tests_check_agent_epoch_and_running() {
        let ops = fence_tests(&Fence {
            agent: "a-1".into(),
            epoch: 7,
        });
        let json = serde_json::to_value(&ops).expect("ops serialize");
        assert_eq!(
            json,
            json!([
                {"op": "test", "path": "/status/claim/agent", "value": "a-1"},
                {"op": "test", "path": "/status/claim/epoch", "value": 7},
                {"op": "test", "path": "/status/phase", "value": "Running"},
            ])
        );
    }

    #[test]
    fn completion_sets_the_phase_last() {
        let item = WorkItem::new("x", Default::default());
        let ops = complete_ops(&item, Some(json!({"ok": true})), json!({}), json!([]));
        let last = serde_json::to_value(ops.last().expect("ops")).expect("json");
        assert_eq!(
            last,
            json!({"op": "add", "path": "/status/phase", "value": "Succeeded"})
        );
    }
}
