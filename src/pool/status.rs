//! The pool's status, as a pure function of what the reconcile observed and decided.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::template::TemplateError;
use crate::api::{AgentPoolStatus, find_condition, fit_condition, labels};

pub const READY: &str = "Ready";
pub const TEMPLATE_VALID: &str = "TemplateValid";
pub const PODS_HEALTHY: &str = "PodsHealthy";

/// Agent counts. `replicas`: pods that exist and are not terminating; `ready`: with the
/// Ready condition; `busy`: holding a Running item; `idle`: ready and not busy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub ready: i32,
    pub busy: i32,
    pub idle: i32,
}

pub struct Observed<'a> {
    pub pool: &'a str,
    pub generation: Option<i64>,
    pub desired: i32,
    pub counts: Counts,
    pub template: Option<&'a TemplateError>,
    /// The last pod creation the API server refused (quota, admission, …).
    pub create_error: Option<&'a str>,
    /// `(healthy, reason, message)` from [`super::health::pods_healthy`].
    pub health: (bool, String, String),
    pub waiting_for_busy: i32,
}

/// `triad.dev/pool=<name>`: the scale subresource's label selector.
pub fn selector(pool: &str) -> String {
    format!("{}={pool}", labels::POOL)
}

/// A condition that keeps its `lastTransitionTime` while its status does not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = find_condition(previous, type_)
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    let mut c = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    };
    // Within the schema's bounds: reasons and messages can come from pod statuses and
    // API errors.
    fit_condition(&mut c);
    c
}

pub fn build(previous: Option<&AgentPoolStatus>, o: &Observed<'_>, now: &Time) -> AgentPoolStatus {
    let prev: &[Condition] = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let c = o.counts;
    let mut count_message = format!("{}/{} agents ready", c.ready, o.desired);
    if o.waiting_for_busy > 0 {
        count_message.push_str(&format!(
            "; {} busy agents above the desired count finish their items before they are removed",
            o.waiting_for_busy
        ));
    }
    let (ready, reason, message) = if let Some(e) = o.template {
        (
            false,
            "TemplateInvalid",
            format!("cannot create agents: {e}"),
        )
    } else if let Some(e) = o.create_error {
        (false, "FailedCreate", format!("cannot create agents: {e}"))
    } else if c.ready >= o.desired {
        let reason = if o.desired == 0 {
            "ScaledToZero"
        } else {
            "AgentsReady"
        };
        (true, reason, count_message)
    } else if !o.health.0 {
        (
            false,
            "AgentsNotReady",
            format!("{count_message}: {}", o.health.1),
        )
    } else {
        (false, "AgentsNotReady", count_message)
    };
    let template = match o.template {
        Some(e) => condition(
            prev,
            TEMPLATE_VALID,
            false,
            "InvalidTemplate",
            &e.to_string(),
            o.generation,
            now,
        ),
        None => condition(prev, TEMPLATE_VALID, true, "Valid", "", o.generation, now),
    };
    AgentPoolStatus {
        replicas: c.replicas,
        desired: o.desired,
        ready: c.ready,
        busy: c.busy,
        idle: c.idle,
        selector: Some(selector(o.pool)),
        observed_generation: o.generation,
        conditions: vec![
            condition(prev, READY, ready, reason, &message, o.generation, now),
            template,
            condition(
                prev,
                PODS_HEALTHY,
                o.health.0,
                &o.health.1,
                &o.health.2,
                o.generation,
                now,
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(1_893_456_000 + s).unwrap())
    }

    #[test]
    fn conditions_are_cut_to_the_schema_bounds() {
        use crate::api::{MAX_MESSAGE_LEN, MAX_REASON_LEN};
        // A pod's waiting reason and an API error can be any length.
        let c = condition(
            &[],
            PODS_HEALTHY,
            false,
            &"CrashLoop".repeat(100),
            &"x".repeat(100_000),
            None,
            &time(0),
        );
        assert_eq!(c.reason.chars().count(), MAX_REASON_LEN);
        assert_eq!(c.message.chars().count(), MAX_MESSAGE_LEN);
    }

    fn healthy() -> (bool, String, String) {
        (true, "AllPodsHealthy".into(), String::new())
    }

    fn observed(desired: i32, counts: Counts) -> Observed<'static> {
        Observed {
            pool: "w",
            generation: Some(3),
            desired,
            counts,
            template: None,
            create_error: None,
            health: healthy(),
            waiting_for_busy: 0,
        }
    }

    fn cond<'a>(s: &'a AgentPoolStatus, t: &str) -> &'a Condition {
        find_condition(&s.conditions, t).unwrap()
    }

    #[test]
    fn counts_selector_and_generation_are_reported() {
        let counts = Counts {
            replicas: 3,
            ready: 2,
            busy: 1,
            idle: 1,
        };
        let s = build(None, &observed(3, counts), &time(0));
        assert_eq!(
            (s.replicas, s.desired, s.ready, s.busy, s.idle),
            (3, 3, 2, 1, 1)
        );
        assert_eq!(s.selector.as_deref(), Some("triad.dev/pool=w"));
        assert_eq!(s.observed_generation, Some(3));
        let r = cond(&s, READY);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "AgentsNotReady")
        );
        assert_eq!(r.message, "2/3 agents ready");
        assert_eq!(cond(&s, TEMPLATE_VALID).status, "True");
        assert_eq!(cond(&s, PODS_HEALTHY).status, "True");
    }

    #[test]
    fn ready_says_why_not() {
        let e = TemplateError {
            field: "spec.template.spec".into(),
            message: "is required".into(),
        };
        let mut o = observed(2, Counts::default());
        o.template = Some(&e);
        let s = build(None, &o, &time(0));
        assert_eq!(cond(&s, READY).reason, "TemplateInvalid");
        let t = cond(&s, TEMPLATE_VALID);
        assert_eq!(
            (t.status.as_str(), t.reason.as_str(), t.message.as_str()),
            (
                "False",
                "InvalidTemplate",
                "spec.template.spec: is required"
            )
        );

        let mut o = observed(2, Counts::default());
        o.create_error = Some("exceeded quota");
        assert_eq!(
            cond(&build(None, &o, &time(0)), READY).reason,
            "FailedCreate"
        );

        let mut o = observed(2, Counts::default());
        o.health = (false, "Unschedulable".into(), "2 of 2 …".into());
        let s = build(None, &o, &time(0));
        assert_eq!(cond(&s, READY).message, "0/2 agents ready: Unschedulable");
        let h = cond(&s, PODS_HEALTHY);
        assert_eq!(
            (h.status.as_str(), h.reason.as_str()),
            ("False", "Unschedulable")
        );

        let s = build(None, &observed(0, Counts::default()), &time(0));
        let r = cond(&s, READY);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("True", "ScaledToZero")
        );

        let mut o = observed(
            0,
            Counts {
                replicas: 1,
                ready: 1,
                busy: 1,
                idle: 0,
            },
        );
        o.waiting_for_busy = 1;
        assert!(
            cond(&build(None, &o, &time(0)), READY)
                .message
                .contains("1 busy agents")
        );
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let first = build(None, &observed(1, Counts::default()), &time(0));
        let again = build(Some(&first), &observed(1, Counts::default()), &time(10));
        assert_eq!(cond(&again, READY).last_transition_time, time(0));
        let ready = Counts {
            replicas: 1,
            ready: 1,
            busy: 0,
            idle: 1,
        };
        let flipped = build(Some(&again), &observed(1, ready), &time(20));
        assert_eq!(cond(&flipped, READY).last_transition_time, time(20));
        assert_eq!(cond(&flipped, TEMPLATE_VALID).last_transition_time, time(0));
    }
}
