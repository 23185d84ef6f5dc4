//! Turns the hub's steps for one item into one status merge patch, written at the
//! resourceVersion the steps were decided on (a CAS): conditions, the intervention
//! records, budget extensions and, for a fence-out, the epoch bump with the outcome,
//! all or nothing. Pure, so it is unit-tested without a cluster.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

use crate::api::{
    Intervention, MAX_INTERVENTION_HISTORY, MAX_MESSAGE_LEN, Outcome, WorkItem, fit_conditions,
    fitted,
};
use crate::core::supervision::{Action, Step, conditions, tagged};

/// Room kept in a message for its attempt tag (`tagged`: " [attempt -2147483648]" at
/// most), so that cutting a long message to the schema's bound never cuts the tag the
/// agent reads.
const TAG_ROOM: usize = 32;

/// The conditions the supervisor writes: never the ones dropped to make room.
const OURS: [&str; 6] = [
    conditions::STALLED,
    conditions::BUDGET_WARNING,
    conditions::OVER_BUDGET,
    conditions::VIOLATION,
    conditions::ESCALATED,
    conditions::CANCEL_REQUESTED,
];

/// What carrying out the steps takes: the status merge patch, and whether the holder's
/// pod is to be deleted once the patch is written.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub body: Value,
    pub delete_pod: bool,
}

/// Sets condition `type_` True, keeping the transition time when it already was True
/// (unless `renew`: a new cancel request must be dated now so the agent of the current
/// attempt reads it).
fn upsert(
    list: &mut Vec<Condition>,
    type_: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
    renew: bool,
) {
    let generation = None;
    match list.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != "True" || renew {
                c.last_transition_time = Time(now);
            }
            c.status = "True".into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => list.push(Condition {
            type_: type_.into(),
            status: "True".into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(now),
            observed_generation: generation,
        }),
    }
}

/// Sets condition `type_` False (it described an earlier attempt).
fn withdraw(list: &mut [Condition], type_: &str, attempt: i32, now: Timestamp) {
    if let Some(c) = list.iter_mut().find(|c| c.type_ == type_) {
        c.status = "False".into();
        c.reason = "NewAttempt".into();
        c.message = format!("cleared when attempt {attempt} started");
        c.last_transition_time = Time(now);
    }
}

/// Builds the patch for `steps` on `item` (as observed), withdrawing the `clear`
/// conditions first (leftovers of an earlier attempt), or None when there is nothing
/// to write.
pub fn plan(item: &WorkItem, steps: &[Step], clear: &[&str], now: Timestamp) -> Option<Plan> {
    let rv = item.metadata.resource_version.as_deref()?;
    let status = item.status.clone().unwrap_or_default();
    if steps.is_empty() && clear.is_empty() {
        return None;
    }
    let mut conds = status.conditions.clone();
    for c in clear {
        withdraw(&mut conds, c, status.attempt, now);
    }
    let mut interventions = status.interventions.clone();
    let mut extension = status.budget_extension.clone();
    let mut extended = false;
    let mut fenced: Option<(crate::api::Claim, Outcome)> = None;
    let mut delete_pod = false;

    for step in steps {
        // Tagged with the attempt, which whole-second times alone cannot tell apart; cut
        // to the schema's bound before, so the tag stays.
        let message = tagged(
            &fitted(&step.message, MAX_MESSAGE_LEN - TAG_ROOM),
            status.attempt,
        );
        if let Some(c) = step.condition {
            upsert(&mut conds, c, &step.reason, &message, now, false);
        }
        match &step.action {
            Action::Warn => {}
            Action::RequestCancel(_) => upsert(
                &mut conds,
                conditions::CANCEL_REQUESTED,
                &step.reason,
                &message,
                now,
                true,
            ),
            Action::FenceOut { outcome, reason } => {
                let claim = crate::k8s::fence::fenced_out_claim(item);
                let mut out = Outcome {
                    kind: *outcome,
                    reason: Some(reason.clone()),
                    message: Some(step.message.clone()),
                    attempt: status.attempt,
                    epoch: claim.epoch,
                    at: Some(Time(now)),
                };
                out.fit();
                fenced = Some((claim, out));
            }
            Action::DeletePod => delete_pod = true,
            Action::Extend { counter, amount } => {
                *extension.entry(counter.clone()).or_insert(0.0) += amount;
                extended = true;
            }
        }
        let mut record = step.intervention(now);
        record.message = Some(message);
        interventions.push(record);
    }
    if interventions.len() > MAX_INTERVENTION_HISTORY {
        let cut = interventions.len() - MAX_INTERVENTION_HISTORY;
        interventions.drain(..cut);
    }
    interventions.iter_mut().for_each(Intervention::fit);
    fit_conditions(&mut conds, &OURS);
    let mut st = serde_json::Map::new();
    if !steps.is_empty() {
        st.insert("interventions".into(), json!(interventions));
    }
    if conds != status.conditions {
        st.insert("conditions".into(), json!(conds));
    }
    if extended {
        st.insert("budgetExtension".into(), json!(extension));
    }
    if let Some((claim, outcome)) = fenced {
        st.insert("claim".into(), json!(claim));
        st.insert("outcome".into(), json!(outcome));
    }
    Some(Plan {
        body: json!({"metadata": {"resourceVersion": rv}, "status": st}),
        delete_pod,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Claim, OutcomeKind, Phase, WorkItemStatus};
    use crate::core::supervision::{Monitor, Signal, decide};

    fn running() -> WorkItem {
        let mut wi = WorkItem::new("w", Default::default());
        wi.metadata.resource_version = Some("42".into());
        wi.status = Some(WorkItemStatus {
            phase: Some(Phase::Running),
            attempt: 2,
            claim: Some(Claim {
                agent: "a".into(),
                pod: Some("p".into()),
                epoch: 5,
                acquired_at: Some(Time(Timestamp::UNIX_EPOCH)),
                lease: Some("triad-agent-p".into()),
            }),
            ..Default::default()
        });
        wi
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("valid")
    }

    #[test]
    fn fence_out_bumps_epoch_records_and_deletes_the_pod_in_one_patch() {
        let wi = running();
        let steps = decide(
            &wi,
            &Default::default(),
            &[Signal::LeaseStale {
                agent: "a".into(),
                observed_for: std::time::Duration::from_secs(15),
            }],
            at(100),
        );
        let p = plan(&wi, &steps, &[], at(100)).expect("a plan");
        assert!(p.delete_pod);
        assert_eq!(p.body["metadata"]["resourceVersion"], "42");
        assert_eq!(p.body["status"]["claim"]["epoch"], 6);
        assert_eq!(p.body["status"]["claim"]["agent"], "a");
        assert_eq!(
            p.body["status"]["outcome"]["kind"],
            json!(OutcomeKind::LeaseExpired)
        );
        assert_eq!(p.body["status"]["outcome"]["epoch"], 6);
        assert_eq!(p.body["status"]["outcome"]["attempt"], 2);
        let recs = p.body["status"]["interventions"].as_array().expect("list");
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["monitor"], Monitor::Health.as_str());
        assert_eq!(recs[0]["action"], "FenceOut");
    }

    #[test]
    fn cancel_request_sets_conditions_dated_now() {
        let mut wi = running();
        // A CancelRequested left True by an earlier attempt is re-dated.
        wi.status.as_mut().expect("status").conditions = vec![Condition {
            type_: conditions::CANCEL_REQUESTED.into(),
            status: "True".into(),
            reason: "Old".into(),
            message: "retry: old".into(),
            last_transition_time: Time(at(1)),
            observed_generation: None,
        }];
        let steps = decide(
            &wi,
            &Default::default(),
            &[Signal::Stalled { since: at(10) }],
            at(400),
        );
        let p = plan(&wi, &steps, &[], at(400)).expect("a plan");
        assert!(!p.delete_pod);
        let conds: Vec<Condition> =
            serde_json::from_value(p.body["status"]["conditions"].clone()).expect("conditions");
        let cr = conds
            .iter()
            .find(|c| c.type_ == conditions::CANCEL_REQUESTED)
            .expect("cancel");
        assert_eq!(cr.last_transition_time, Time(at(400)));
        assert!(cr.message.starts_with("retry:"));
        assert!(conds.iter().any(|c| c.type_ == conditions::STALLED));
        assert!(p.body["status"].get("claim").is_none());
    }

    #[test]
    fn history_stays_bounded() {
        let mut wi = running();
        let steps = decide(
            &wi,
            &Default::default(),
            &[Signal::Stalled { since: at(10) }],
            at(400),
        );
        let rec = steps[0].intervention(at(0));
        wi.status.as_mut().expect("status").interventions = vec![rec; MAX_INTERVENTION_HISTORY];
        let p = plan(&wi, &steps, &[], at(400)).expect("a plan");
        let recs = p.body["status"]["interventions"].as_array().expect("list");
        assert_eq!(recs.len(), MAX_INTERVENTION_HISTORY);
        assert_eq!(recs.last().expect("last")["action"], "CancelRequested");
    }

    #[test]
    fn long_messages_are_cut_to_the_schema_keeping_the_attempt_tag() {
        use crate::api::{MAX_CONDITIONS, MAX_MESSAGE_LEN, MAX_REASON_LEN};
        use crate::core::supervision::{
            Action, Monitor, StopEnd, StopRequest, attempt_tag, of_current_attempt,
        };
        let mut wi = running();
        // The list is full of others' conditions, older than ours.
        wi.status.as_mut().expect("status").conditions = (0..MAX_CONDITIONS)
            .map(|i| Condition {
                type_: format!("Other{i}"),
                status: "True".into(),
                reason: "R".into(),
                message: String::new(),
                last_transition_time: Time(at(i as i64)),
                observed_generation: None,
            })
            .collect();
        // A violation's detail comes from the work command.
        let step = Step {
            monitor: Monitor::Violation,
            reason: "V".repeat(1000),
            action: Action::RequestCancel(StopRequest {
                end: StopEnd::Retry,
                cause: "Violation".into(),
            }),
            message: format!("retry: {}", "ü".repeat(20_000)),
            condition: Some(conditions::VIOLATION),
        };
        let p = plan(&wi, &[step], &[], at(400)).expect("a plan");
        let conds: Vec<Condition> =
            serde_json::from_value(p.body["status"]["conditions"].clone()).expect("conditions");
        assert_eq!(conds.len(), MAX_CONDITIONS);
        assert!(
            !conds
                .iter()
                .any(|c| c.type_ == "Other0" || c.type_ == "Other1")
        );
        let cr = find(&conds, conditions::CANCEL_REQUESTED);
        assert!(cr.message.chars().count() <= MAX_MESSAGE_LEN);
        assert_eq!(cr.reason.chars().count(), MAX_REASON_LEN);
        assert_eq!(
            attempt_tag(&cr.message),
            Some(2),
            "the tag survives the cut"
        );
        assert!(of_current_attempt(
            &wi,
            &cr.message,
            cr.last_transition_time.0
        ));
        assert!(find(&conds, conditions::VIOLATION).message.chars().count() <= MAX_MESSAGE_LEN);
        let recs: Vec<crate::api::Intervention> =
            serde_json::from_value(p.body["status"]["interventions"].clone()).expect("list");
        let m = recs[0].message.as_deref().expect("message");
        assert!(m.chars().count() <= MAX_MESSAGE_LEN && attempt_tag(m) == Some(2));
        assert_eq!(recs[0].reason.chars().count(), MAX_REASON_LEN);
    }

    fn find<'a>(conds: &'a [Condition], type_: &str) -> &'a Condition {
        conds.iter().find(|c| c.type_ == type_).expect(type_)
    }

    #[test]
    fn leftovers_of_an_earlier_attempt_are_withdrawn_before_new_steps() {
        let mut wi = running();
        let old = |type_: &str| Condition {
            type_: type_.into(),
            status: "True".into(),
            reason: "Old".into(),
            message: "old".into(),
            last_transition_time: Time(at(0)),
            observed_generation: None,
        };
        wi.status.as_mut().expect("status").conditions =
            vec![old(conditions::STALLED), old(conditions::BUDGET_WARNING)];
        let p = plan(
            &wi,
            &[],
            &[conditions::STALLED, conditions::BUDGET_WARNING],
            at(50),
        )
        .expect("a plan");
        assert!(p.body["status"].get("interventions").is_none());
        let conds: Vec<Condition> =
            serde_json::from_value(p.body["status"]["conditions"].clone()).expect("conditions");
        assert!(
            conds
                .iter()
                .all(|c| c.status == "False" && c.reason == "NewAttempt")
        );
        assert!(plan(&wi, &[], &[], at(50)).is_none());

        // Stalled again in the new attempt: withdrawn, then set again dated now.
        let steps = decide(
            &wi,
            &Default::default(),
            &[Signal::Stalled { since: at(10) }],
            at(400),
        );
        let p = plan(&wi, &steps, &[conditions::STALLED], at(400)).expect("a plan");
        let conds: Vec<Condition> =
            serde_json::from_value(p.body["status"]["conditions"].clone()).expect("conditions");
        let stalled = conds
            .iter()
            .find(|c| c.type_ == conditions::STALLED)
            .expect("stalled");
        assert_eq!(
            (stalled.status.as_str(), &stalled.last_transition_time),
            ("True", &Time(at(400)))
        );
    }
}
