//! The work command's report channel: one JSON object per line.
//!
//! ```text
//! {"progress": {"percent": 40, "message": "…", "checkpoint": "…"}}
//! {"usage": {"tokens": 1200, "cost": 0.03}}
//! {"violation": {"rule": "…", "detail": "…"}}
//! {"result": {…}}
//! {"fail": {"reason": "…", "retryable": false}}
//! ```
//!
//! A line may carry several keys; unknown keys and `null` values are ignored, so
//! commands can add their own. A line is taken whole or not at all: one bad key makes
//! the line an error (the runtime logs it and goes on), so a half-understood line never
//! changes the item. Choices, each to keep a buggy command from hurting the item:
//!
//! - `percent` is clamped to 0–100 and rounded down: 101 from a rounding slip should
//!   not lose the message and checkpoint that came with it; a non-number is an error.
//! - `usage` values are cumulative, finite and non-negative; `wallSeconds` and
//!   `cpuSeconds` are refused because the runtime measures them itself.
//! - `fail.retryable` defaults to false: exit codes already say "retryable failure",
//!   so a fail line exists to say otherwise. `fail.reason` defaults to `Failed`.
//! - `message`, `detail` and `reason` are cut to a bounded length; `checkpoint`,
//!   `rule` and `result` are refused when too long, since cutting would corrupt them.
//! - `result` is refused when nested deeper than [`MAX_RESULT_DEPTH`]: it is stored in
//!   the item's status, every role decodes item lists with serde_json (which stops at
//!   128 levels, counted from the list), and one unreadable item fails the whole list.
//! - Lines over 64 KiB are refused before parsing.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::waiting::truncate;
use crate::api::{CPU_SECONDS, Counters, MAX_RESULT_BYTES, WALL_SECONDS, depth};

pub const MAX_LINE: usize = 64 * 1024;
/// `progress.message` and `violation.detail`, in characters (cut beyond).
pub const MAX_TEXT: usize = 1024;
/// `fail.reason`, in characters (cut beyond).
pub const MAX_REASON: usize = 128;
/// `progress.checkpoint`, in bytes (refused beyond).
pub const MAX_CHECKPOINT: usize = 4096;
/// Counter and rule names, in bytes (refused beyond): they become map keys and labels.
pub const MAX_NAME: usize = 63;
/// Levels of nesting in `result`, the result object being the first (refused beyond).
pub const MAX_RESULT_DEPTH: usize = 32;

/// What one line reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub progress: Option<ProgressReport>,
    /// Cumulative counter values; empty when the line had no usage.
    pub usage: Counters,
    pub violation: Option<ViolationReport>,
    pub result: Option<Value>,
    pub fail: Option<FailReport>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        *self == Report::default()
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgressReport {
    pub percent: Option<i32>,
    pub message: Option<String>,
    pub checkpoint: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ViolationReport {
    pub rule: String,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FailReport {
    pub reason: String,
    pub retryable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report line is {len} bytes, over the {MAX_LINE}-byte limit")]
    TooLong { len: usize },
    #[error("report line is not JSON: {0}")]
    Json(String),
    #[error("report line must be a JSON object")]
    NotObject,
    #[error("report line: {key}: {why}")]
    Invalid { key: &'static str, why: String },
}

fn invalid(key: &'static str, why: impl Into<String>) -> ReportError {
    ReportError::Invalid {
        key,
        why: why.into(),
    }
}

/// Parses one line (a trailing newline is fine). A blank line is an empty report.
pub fn parse_line(line: &[u8]) -> Result<Report, ReportError> {
    if line.len() > MAX_LINE {
        return Err(ReportError::TooLong { len: line.len() });
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(Report::default());
    }
    let value: Value =
        serde_json::from_slice(line).map_err(|e| ReportError::Json(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(ReportError::NotObject);
    };
    let present = |key: &str| obj.get(key).filter(|v| !v.is_null());
    Ok(Report {
        progress: present("progress").map(progress).transpose()?,
        usage: present("usage").map(usage).transpose()?.unwrap_or_default(),
        violation: present("violation").map(violation).transpose()?,
        result: present("result").map(result).transpose()?,
        fail: present("fail").map(fail).transpose()?,
    })
}

fn object<'a>(key: &'static str, v: &'a Value) -> Result<&'a Map<String, Value>, ReportError> {
    v.as_object()
        .ok_or_else(|| invalid(key, "must be an object"))
}

/// An optional string field (absent or null = None).
fn string(
    key: &'static str,
    obj: &Map<String, Value>,
    field: &str,
) -> Result<Option<String>, ReportError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(key, format!("{field} must be a string"))),
    }
}

fn progress(v: &Value) -> Result<ProgressReport, ReportError> {
    let obj = object("progress", v)?;
    let percent = match obj.get("percent") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            let p = n.as_f64().unwrap_or(0.0);
            // NaN cannot come from JSON, but the clamp must hold for any f64.
            Some(if p.is_nan() {
                0
            } else {
                p.clamp(0.0, 100.0).floor() as i32
            })
        }
        Some(_) => {
            return Err(invalid(
                "progress",
                "percent must be a number from 0 to 100",
            ));
        }
    };
    let checkpoint = string("progress", obj, "checkpoint")?;
    if checkpoint
        .as_ref()
        .is_some_and(|c| c.len() > MAX_CHECKPOINT)
    {
        return Err(invalid(
            "progress",
            format!(
                "checkpoint is over {MAX_CHECKPOINT} bytes; store large state elsewhere and report a reference"
            ),
        ));
    }
    Ok(ProgressReport {
        percent,
        message: string("progress", obj, "message")?.map(|m| truncate(m, MAX_TEXT)),
        checkpoint,
    })
}

fn usage(v: &Value) -> Result<Counters, ReportError> {
    let obj = object("usage", v)?;
    let mut out = BTreeMap::new();
    for (name, value) in obj {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(invalid(
                "usage",
                format!("counter names must be 1 to {MAX_NAME} bytes"),
            ));
        }
        if name == WALL_SECONDS || name == CPU_SECONDS {
            return Err(invalid(
                "usage",
                format!("{name} is measured by the agent runtime"),
            ));
        }
        let n = value
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| invalid("usage", format!("{name} must be a non-negative number")))?;
        out.insert(name.clone(), n);
    }
    Ok(out)
}

fn violation(v: &Value) -> Result<ViolationReport, ReportError> {
    let obj = object("violation", v)?;
    let rule = string("violation", obj, "rule")?
        .filter(|r| !r.is_empty() && r.len() <= MAX_NAME)
        .ok_or_else(|| {
            invalid(
                "violation",
                format!("rule must be a string of 1 to {MAX_NAME} bytes"),
            )
        })?;
    Ok(ViolationReport {
        rule,
        detail: string("violation", obj, "detail")?.map(|d| truncate(d, MAX_TEXT)),
    })
}

fn result(v: &Value) -> Result<Value, ReportError> {
    object("result", v)?;
    let depth = depth(v);
    if depth > MAX_RESULT_DEPTH {
        return Err(invalid(
            "result",
            format!("nested {depth} levels deep, over the limit of {MAX_RESULT_DEPTH}"),
        ));
    }
    let size = serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
    if size > MAX_RESULT_BYTES {
        return Err(invalid(
            "result",
            format!(
                "{size} bytes, over the {MAX_RESULT_BYTES}-byte limit; store large results elsewhere and report a reference"
            ),
        ));
    }
    Ok(v.clone())
}

fn fail(v: &Value) -> Result<FailReport, ReportError> {
    let obj = object("fail", v)?;
    let retryable = match obj.get("retryable") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("fail", "retryable must be true or false")),
    };
    let reason = string("fail", obj, "reason")?
        .filter(|r| !r.is_empty())
        .map_or_else(|| "Failed".to_string(), |r| truncate(r, MAX_REASON));
    Ok(FailReport { reason, retryable })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(s: &str) -> Result<Report, ReportError> {
        parse_line(s.as_bytes())
    }

    #[test]
    fn progress_line() {
        let r =
            parse(r#"{"progress": {"percent": 40, "message": "half", "checkpoint": "page-7"}}"#)
                .unwrap();
        assert_eq!(
            r.progress,
            Some(ProgressReport {
                percent: Some(40),
                message: Some("half".into()),
                checkpoint: Some("page-7".into())
            })
        );
        assert!(
            r.usage.is_empty() && r.fail.is_none() && r.result.is_none() && r.violation.is_none()
        );
    }

    #[test]
    fn percent_is_clamped_and_floored() {
        let pct = |v: &str| {
            parse(&format!(r#"{{"progress": {{"percent": {v}}}}}"#))
                .unwrap()
                .progress
                .unwrap()
                .percent
        };
        assert_eq!(pct("101"), Some(100));
        assert_eq!(pct("-3"), Some(0));
        assert_eq!(pct("99.9"), Some(99));
        assert_eq!(pct("1e300"), Some(100));
        assert_eq!(pct("null"), None);
        assert!(matches!(
            parse(r#"{"progress": {"percent": "40"}}"#),
            Err(ReportError::Invalid {
                key: "progress",
                ..
            })
        ));
    }

    #[test]
    fn progress_fields_are_optional_and_bounded() {
        let r = parse(r#"{"progress": {}}"#).unwrap();
        assert_eq!(r.progress, Some(ProgressReport::default()));
        let long = "m".repeat(5000);
        let r = parse(&format!(r#"{{"progress": {{"message": "{long}"}}}}"#)).unwrap();
        assert_eq!(
            r.progress.unwrap().message.unwrap().chars().count(),
            MAX_TEXT
        );
        assert!(parse(&format!(r#"{{"progress": {{"checkpoint": "{long}"}}}}"#)).is_err());
        assert!(parse(r#"{"progress": {"checkpoint": 7}}"#).is_err());
        assert!(parse(r#"{"progress": 40}"#).is_err());
    }

    #[test]
    fn usage_line() {
        let r = parse(r#"{"usage": {"tokens": 1200, "cost": 0.03}}"#).unwrap();
        assert_eq!(
            r.usage,
            BTreeMap::from([("tokens".to_string(), 1200.0), ("cost".to_string(), 0.03)])
        );
    }

    #[test]
    fn usage_rejects_negative_non_numbers_and_runtime_counters() {
        for bad in [
            r#"{"usage": {"tokens": -1}}"#,
            r#"{"usage": {"tokens": "1"}}"#,
            r#"{"usage": {"tokens": null}}"#,
            r#"{"usage": {"wallSeconds": 3}}"#,
            r#"{"usage": {"cpuSeconds": 3}}"#,
            r#"{"usage": {"": 3}}"#,
            r#"{"usage": [1]}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(ReportError::Invalid { key: "usage", .. })),
                "{bad}"
            );
        }
        let long = format!(r#"{{"usage": {{"{}": 1}}}}"#, "c".repeat(64));
        assert!(parse(&long).is_err());
        // 1e400 overflows f64: serde_json refuses it rather than giving infinity.
        assert!(parse(r#"{"usage": {"tokens": 1e400}}"#).is_err());
    }

    #[test]
    fn violation_line() {
        let r = parse(r#"{"violation": {"rule": "pii", "detail": "found an email"}}"#).unwrap();
        assert_eq!(
            r.violation,
            Some(ViolationReport {
                rule: "pii".into(),
                detail: Some("found an email".into())
            })
        );
        assert!(
            parse(r#"{"violation": {"detail": "x"}}"#).is_err(),
            "rule is required"
        );
        assert!(parse(r#"{"violation": {"rule": ""}}"#).is_err());
    }

    #[test]
    fn result_line() {
        let r = parse(r#"{"result": {"pages": 3}}"#).unwrap();
        assert_eq!(r.result, Some(json!({"pages": 3})));
        assert!(parse(r#"{"result": 3}"#).is_err(), "results are objects");
        let big = format!(
            r#"{{"result": {{"x": "{}"}}}}"#,
            "y".repeat(MAX_RESULT_BYTES)
        );
        assert!(matches!(
            parse(&big),
            Err(ReportError::Invalid { key: "result", .. })
        ));
    }

    #[test]
    fn results_nested_too_deep_are_refused() {
        let nested = |levels: usize| {
            let inner = (1..levels).fold(json!({}), |v, _| json!({ "n": v }));
            json!({ "result": inner }).to_string()
        };
        assert_eq!(depth(&json!({"a": [1, {"b": []}]})), 4);
        assert!(parse(&nested(MAX_RESULT_DEPTH)).is_ok());
        let e = parse(&nested(MAX_RESULT_DEPTH + 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "report line: result: nested 33 levels deep, over the limit of 32"
        );
    }

    #[test]
    fn fail_line() {
        let r = parse(r#"{"fail": {"reason": "BadInput", "retryable": false}}"#).unwrap();
        assert_eq!(
            r.fail,
            Some(FailReport {
                reason: "BadInput".into(),
                retryable: false
            })
        );
        let r = parse(r#"{"fail": {"retryable": true}}"#).unwrap();
        assert_eq!(
            r.fail,
            Some(FailReport {
                reason: "Failed".into(),
                retryable: true
            })
        );
        assert!(
            !parse(r#"{"fail": {"reason": "x"}}"#)
                .unwrap()
                .fail
                .unwrap()
                .retryable
        );
        assert!(parse(r#"{"fail": {"retryable": "no"}}"#).is_err());
        let long = parse(&format!(
            r#"{{"fail": {{"reason": "{}"}}}}"#,
            "r".repeat(500)
        ))
        .unwrap();
        assert_eq!(long.fail.unwrap().reason.chars().count(), MAX_REASON);
    }

    #[test]
    fn several_keys_and_unknown_keys() {
        let r = parse(r#"{"progress": {"percent": 100}, "usage": {"tokens": 5}, "result": {}, "mine": [1], "fail": null}"#)
            .unwrap();
        assert_eq!(r.progress.unwrap().percent, Some(100));
        assert_eq!(r.usage["tokens"], 5.0);
        assert_eq!(r.result, Some(json!({})));
        assert_eq!(r.fail, None);
        assert!(parse(r#"{"something": "else"}"#).unwrap().is_empty());
    }

    #[test]
    fn one_bad_key_refuses_the_whole_line() {
        assert!(parse(r#"{"progress": {"percent": 10}, "usage": {"tokens": -5}}"#).is_err());
    }

    #[test]
    fn malformed_lines_are_typed_errors() {
        assert!(matches!(parse("{"), Err(ReportError::Json(_))));
        assert!(matches!(parse("progress 40"), Err(ReportError::Json(_))));
        assert_eq!(parse("[1]"), Err(ReportError::NotObject));
        assert_eq!(parse("40"), Err(ReportError::NotObject));
        assert!(matches!(
            parse_line(b"{\"a\": \"\xff\"}"),
            Err(ReportError::Json(_))
        ));
    }

    #[test]
    fn blank_lines_and_newlines() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("  \r\n").unwrap().is_empty());
        assert_eq!(parse("{\"usage\": {\"t\": 1}}\n").unwrap().usage["t"], 1.0);
    }

    #[test]
    fn oversize_lines_are_refused_before_parsing() {
        let line = vec![b' '; MAX_LINE + 1];
        assert_eq!(
            parse_line(&line),
            Err(ReportError::TooLong { len: MAX_LINE + 1 })
        );
        let mut ok = br#"{"progress": {"message": ""#.to_vec();
        ok.resize(MAX_LINE - 3, b'm');
        ok.extend_from_slice(br#""}}"#);
        assert!(parse_line(&ok).is_ok());
    }

    #[test]
    fn errors_explain_themselves() {
        let e = parse(r#"{"usage": {"wallSeconds": 3}}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "report line: usage: wallSeconds is measured by the agent runtime"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_line(&bytes);
        }

        #[test]
        fn arbitrary_json_shapes_never_panic(s in r#"\{("(progress|usage|violation|result|fail|percent|rule)": ?(-?[0-9.e]{1,6}|"[a-z]{0,3}"|\{\}|\[\]|null|true|\{"(percent|tokens|rule|reason|retryable|message)": ?(-?[0-9.e]{1,6}|"[a-z]{0,3}"|null|false)\}),? ?){0,4}\}"#) {
            let _ = parse_line(s.as_bytes());
        }

        #[test]
        fn any_numeric_percent_lands_in_range(p in any::<f64>().prop_filter("finite", |p| p.is_finite())) {
            let line = json!({"progress": {"percent": p}}).to_string();
            let got = parse_line(line.as_bytes()).unwrap().progress.unwrap().percent.unwrap();
            prop_assert!((0..=100).contains(&got));
        }
    }
}
