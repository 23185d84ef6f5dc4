//! The report-line parser (`core::report`) and the agent's line splitter, fuzzed.
//!
//! Every input, corpus or generated, goes through [`check_contract`]: the parser never
//! panics, a line is either accepted with every value inside the documented bounds or
//! refused with a reason, and what it accepts can be stored on a WorkItem and read back.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use triad::agent::report::{Line, LineSplitter, ReportState};
use triad::api::{CPU_SECONDS, MAX_RESULT_BYTES, WALL_SECONDS, WorkItem};
use triad::core::report::{
    MAX_CHECKPOINT, MAX_LINE, MAX_NAME, MAX_REASON, MAX_RESULT_DEPTH, MAX_TEXT, Report,
    ReportError, parse_line,
};

use crate::crd_model::nested;
use crate::{config, corpus_files};

// ---------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------

/// Everything a user may rely on for one line; `Err` says which promise broke.
fn check_contract(line: &[u8]) -> Result<Result<Report, ReportError>, String> {
    let parsed = parse_line(line);
    if line.len() > MAX_LINE {
        return match parsed {
            Err(ReportError::TooLong { len }) if len == line.len() => Ok(parsed),
            other => Err(format!(
                "a {}-byte line must be refused as too long, got {other:?}",
                line.len()
            )),
        };
    }
    match &parsed {
        Ok(report) => {
            check_bounds(report)?;
            if line.iter().all(u8::is_ascii_whitespace) && !report.is_empty() {
                return Err("a blank line must be an empty report".into());
            }
        }
        Err(e) => {
            let text = e.to_string();
            if !text.starts_with("report line") {
                return Err(format!("an error must say what it is about: {text:?}"));
            }
            if let ReportError::Invalid { key, why } = e {
                let known = ["progress", "usage", "violation", "result", "fail"];
                if !known.contains(key) || why.is_empty() {
                    return Err(format!("an invalid key must be named with a reason: {e:?}"));
                }
            }
            if matches!(e, ReportError::TooLong { .. }) {
                return Err(format!("a {}-byte line is within the limit", line.len()));
            }
        }
    }
    // A line means the same with or without its newline.
    if line.len() < MAX_LINE {
        let mut with_newline = line.to_vec();
        with_newline.push(b'\n');
        if parse_line(&with_newline).ok() != parsed.clone().ok() {
            return Err("a trailing newline changed the verdict".into());
        }
    }
    // The agent folds the line in without failing and counts a refusal exactly once.
    let mut state = ReportState::default();
    state.line(line);
    if state.take_rejected() != u64::from(parsed.is_err()) {
        return Err("the agent's rejected count disagrees with the parser".into());
    }
    if state
        .progress
        .percent
        .is_some_and(|p| !(0..=100).contains(&p))
    {
        return Err(format!(
            "agent state percent {:?} out of range",
            state.progress.percent
        ));
    }
    Ok(parsed)
}

fn check_bounds(r: &Report) -> Result<(), String> {
    let chars = |s: &str| s.chars().count();
    if let Some(p) = &r.progress {
        if p.percent.is_some_and(|p| !(0..=100).contains(&p)) {
            return Err(format!("percent {:?} outside 0..=100", p.percent));
        }
        if p.message.as_deref().is_some_and(|m| chars(m) > MAX_TEXT) {
            return Err("message over MAX_TEXT characters".into());
        }
        if p.checkpoint
            .as_deref()
            .is_some_and(|c| c.len() > MAX_CHECKPOINT)
        {
            return Err("checkpoint over MAX_CHECKPOINT bytes".into());
        }
    }
    for (name, value) in &r.usage {
        if name.is_empty() || name.len() > MAX_NAME || name == WALL_SECONDS || name == CPU_SECONDS {
            return Err(format!("counter name {name:?} accepted"));
        }
        if !value.is_finite() || *value < 0.0 {
            return Err(format!("counter value {value} accepted"));
        }
    }
    if let Some(v) = &r.violation {
        if v.rule.is_empty() || v.rule.len() > MAX_NAME {
            return Err(format!("rule {:?} accepted", v.rule));
        }
        if v.detail.as_deref().is_some_and(|d| chars(d) > MAX_TEXT) {
            return Err("detail over MAX_TEXT characters".into());
        }
    }
    if let Some(f) = &r.fail
        && (f.reason.is_empty() || chars(&f.reason) > MAX_REASON)
    {
        return Err(format!("fail reason {:?} accepted", f.reason));
    }
    if let Some(result) = &r.result {
        if !result.is_object() {
            return Err("a result must be an object".into());
        }
        let size = serde_json::to_vec(result).map_err(|e| e.to_string())?.len();
        if size > MAX_RESULT_BYTES {
            return Err(format!("a {size}-byte result accepted"));
        }
        stored_result_decodes(result)?;
    }
    Ok(())
}

/// The agent writes an accepted result to `status.result`; every role then lists and
/// watches WorkItems with a typed client. A result that cannot be decoded there would
/// break the whole list, not just this item.
fn stored_result_decodes(result: &Value) -> Result<(), String> {
    let list = json!({
        "apiVersion": "triad.dev/v1alpha1",
        "kind": "WorkItemList",
        "metadata": {},
        "items": [{
            "apiVersion": "triad.dev/v1alpha1",
            "kind": "WorkItem",
            "metadata": {"name": "x"},
            "spec": {"queue": "q"},
            "status": {"result": result},
        }],
    });
    let text = serde_json::to_string(&list).map_err(|e| e.to_string())?;
    serde_json::from_str::<kube::core::ObjectList<WorkItem>>(&text)
        .map(drop)
        .map_err(|e| format!("an accepted result cannot be read back from a WorkItem list: {e}"))
}

// ---------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------

/// One corpus file: a `#!` header line, then the line itself (every byte after the
/// header's newline). See tests/corpus/README.md.
struct Case {
    ok: bool,
    /// For `err`: a substring of the error's text.
    error: String,
    checks: Vec<(String, String)>,
    line: Vec<u8>,
}

fn load(path: &Path) -> Case {
    let bytes = std::fs::read(path).expect("read corpus file");
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(bytes.len());
    let header = std::str::from_utf8(&bytes[..split]).expect("header is UTF-8");
    let header = header
        .strip_prefix("#! ")
        .unwrap_or_else(|| panic!("{}: no `#! ` header", path.display()));
    let (assertions, error) = header.split_once(" | ").unwrap_or((header, ""));
    let mut tokens = assertions.split_whitespace();
    let ok = match tokens.next() {
        Some("ok") => true,
        Some("err") => false,
        other => panic!(
            "{}: header must start with ok or err, not {other:?}",
            path.display()
        ),
    };
    let mut checks: Vec<(String, String)> = tokens
        .map(|t| {
            let (k, v) = t
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: bad assertion {t:?}", path.display()));
            (k.to_string(), v.to_string())
        })
        .collect();
    let mut line = bytes.get(split + 1..).unwrap_or_default().to_vec();
    // `pad=N` pads the line with spaces (insignificant in JSON) to exactly N bytes, so
    // the size limits are tested at their edges without committing 64 KiB files.
    if let Some(i) = checks.iter().position(|(k, _)| k == "pad") {
        let n: usize = checks.remove(i).1.parse().expect("pad=<bytes>");
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        assert!(line.len() <= n, "{}: line longer than pad", path.display());
        line.resize(n, b' ');
    }
    Case {
        ok,
        error: error.to_string(),
        checks,
        line,
    }
}

fn check_field(r: &Report, key: &str, want: &str) -> Result<(), String> {
    let some = |present: bool| match want {
        "present" => present,
        "none" => !present,
        _ => panic!("{key}= takes present or none"),
    };
    let chars = |s: Option<&String>| s.map_or(0, |s| s.chars().count()).to_string() == want;
    let progress = r.progress.clone().unwrap_or_default();
    let good = match key {
        "empty" => r.is_empty() == (want == "true"),
        "progress" => some(r.progress.is_some()),
        "violation" => some(r.violation.is_some()),
        "fail" => some(r.fail.is_some()),
        "result" if want == "present" || want == "none" => some(r.result.is_some()),
        "result" => r.result == Some(serde_json::from_str(want).expect("result=<json>")),
        "percent" if want == "none" => progress.percent.is_none(),
        "percent" => progress.percent == Some(want.parse().expect("percent=<int>")),
        "message" => progress.message.as_deref() == Some(want),
        "message.chars" => chars(progress.message.as_ref()),
        "checkpoint" => progress.checkpoint.as_deref() == Some(want),
        "checkpoint.bytes" => progress.checkpoint.map_or(0, |c| c.len()).to_string() == want,
        "rule" => r.violation.as_ref().map(|v| v.rule.as_str()) == Some(want),
        "detail.chars" => chars(r.violation.as_ref().and_then(|v| v.detail.as_ref())),
        "reason" => r.fail.as_ref().map(|f| f.reason.as_str()) == Some(want),
        "reason.chars" => chars(r.fail.as_ref().map(|f| &f.reason)),
        "retryable" => r.fail.as_ref().map(|f| f.retryable.to_string()).as_deref() == Some(want),
        "usage.count" => r.usage.len().to_string() == want,
        k if k.starts_with("usage.") => {
            r.usage.get(&k["usage.".len()..])
                == Some(&want.parse::<f64>().expect("usage.<name>=<number>"))
        }
        _ => panic!("unknown assertion {key}"),
    };
    if good {
        Ok(())
    } else {
        Err(format!("{key}={want} does not hold for {r:?}"))
    }
}

#[test]
fn every_report_corpus_line_meets_its_expectation() {
    let files = corpus_files("report-lines");
    let mut failures = Vec::new();
    for path in &files {
        let case = load(path);
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let verdict = match check_contract(&case.line) {
            Err(broken) => Err(broken),
            Ok(Ok(report)) if case.ok => case
                .checks
                .iter()
                .try_for_each(|(k, v)| check_field(&report, k, v)),
            Ok(Err(e)) if !case.ok => {
                if e.to_string().contains(&case.error) {
                    Ok(())
                } else {
                    Err(format!("error {:?} lacks {:?}", e.to_string(), case.error))
                }
            }
            Ok(other) => Err(format!(
                "expected {}, got {other:?}",
                if case.ok { "ok" } else { "err" }
            )),
        };
        if let Err(why) = verdict {
            failures.push(format!("{name}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus lines failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        corpus_files("report-lines")
            .iter()
            .map(|p| load(p).line)
            .collect()
    })
}

// ---------------------------------------------------------------------------------
// Mutation fuzzing from the corpus
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
    /// The start of this seed up to `at`, then another seed from `from`.
    Splice {
        other: usize,
        at: usize,
        from: usize,
    },
    Duplicate {
        at: usize,
        len: usize,
    },
}

/// Tokens that make JSON parsers take their rarer paths.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"-",
    b"1e999",
    b"-0",
    b"NaN",
    b"Infinity",
    b"1e-400",
    b"18446744073709551616",
    b"\xff",
    b"\xc3",
    b"\x00",
    b"\n",
    b"\r",
    b"\xef\xbb\xbf",
    b"\"progress\":",
    b"\"usage\":",
    b"\"result\":",
    b"\"fail\":",
    b"\"violation\":",
    b"{\"percent\":",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (
            any::<usize>(),
            prop_oneof![
                proptest::sample::select(TOKENS).prop_map(<[u8]>::to_vec),
                proptest::collection::vec(any::<u8>(), 1..8),
            ]
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(other, at, from)| Mutation::Splice { other, at, from }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

fn apply(mut line: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % (len + 1) };
    match m {
        Mutation::Flip { at, bit } if !line.is_empty() => {
            let i = at % line.len();
            line[i] ^= 1 << bit;
        }
        Mutation::Flip { .. } => {}
        Mutation::Insert { at, bytes } => {
            let i = pos(*at, line.len());
            line.splice(i..i, bytes.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let i = pos(*at, line.len());
            line.drain(i..(i + len).min(line.len()));
        }
        Mutation::Truncate { at } => line.truncate(pos(*at, line.len())),
        Mutation::Splice { other, at, from } => {
            let seeds = seeds();
            let other = &seeds[other % seeds.len()];
            line.truncate(pos(*at, line.len()));
            line.extend_from_slice(&other[pos(*from, other.len())..]);
        }
        Mutation::Duplicate { at, len } => {
            let i = pos(*at, line.len());
            let piece = line[i..(i + len).min(line.len())].to_vec();
            line.splice(i..i, piece);
        }
    }
    line
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn mutated_corpus_lines_keep_the_contract(
        seed in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seeds();
        let line = mutations.iter().fold(seeds[seed % seeds.len()].clone(), apply);
        if let Err(broken) = check_contract(&line) {
            prop_assert!(false, "{broken}\nline: {:?}", String::from_utf8_lossy(&line));
        }
    }
}

// ---------------------------------------------------------------------------------
// Structure-aware generation: report objects whose verdict is known by construction
// ---------------------------------------------------------------------------------

/// One key of a report line, and whether the parser must accept it.
#[derive(Clone, Debug)]
struct Part {
    key: &'static str,
    value: Value,
    valid: bool,
}

fn text_value() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[a-z]{0,5}",
        proptest::collection::vec(
            proptest::sample::select(&["é", "😀", "a", "\u{0}", "\"", "\\", "\u{202e}"][..]),
            0..2000
        )
        .prop_map(|v| v.concat()),
    ]
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()),
        Just(0.0),
        Just(-0.0),
        Just(100.0),
        Just(100.5),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(-f64::MIN_POSITIVE),
        (-10i64..110).prop_map(|i| i as f64),
    ]
}

fn progress_part() -> impl Strategy<Value = Part> {
    let percent = prop_oneof![
        number().prop_map(|n| (json!(n), true)),
        any::<i64>().prop_map(|n| (json!(n), true)),
        any::<u64>().prop_map(|n| (json!(n), true)),
        Just((Value::Null, true)),
        prop_oneof![
            Just(json!("40")),
            Just(json!(true)),
            Just(json!([40])),
            Just(json!({"v": 1}))
        ]
        .prop_map(|v| (v, false)),
    ];
    let checkpoint = prop_oneof![
        "[a-z0-9/-]{0,20}".prop_map(|s| (json!(s), true)),
        (MAX_CHECKPOINT - 2..MAX_CHECKPOINT + 3)
            .prop_map(|n| (json!("c".repeat(n)), n <= MAX_CHECKPOINT)),
        // Bytes, not characters: 1366 × '€' is 4098 bytes.
        Just((json!("€".repeat(1366)), false)),
        Just((json!(7), false)),
    ];
    let message = prop_oneof![
        text_value().prop_map(|s| (json!(s), true)),
        Just((json!(["m"]), false)),
    ];
    (
        proptest::option::of(percent),
        proptest::option::of(checkpoint),
        proptest::option::of(message),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(percent, checkpoint, message, not_object)| {
            if not_object {
                return Part {
                    key: "progress",
                    value: json!(40),
                    valid: false,
                };
            }
            let mut obj = Map::new();
            let mut valid = true;
            for (k, field) in [
                ("percent", percent),
                ("checkpoint", checkpoint),
                ("message", message),
            ] {
                if let Some((v, ok)) = field {
                    obj.insert(k.into(), v);
                    valid &= ok;
                }
            }
            Part {
                key: "progress",
                value: Value::Object(obj),
                valid,
            }
        })
}

fn usage_part() -> impl Strategy<Value = Part> {
    let name = prop_oneof![
        "[a-zA-Z][a-zA-Z0-9_.]{0,20}".prop_map(|s| (s, true)),
        (MAX_NAME - 1..MAX_NAME + 2).prop_map(|n| ("n".repeat(n), n <= MAX_NAME)),
        Just(("é".repeat(32), false)),
        Just((String::new(), false)),
        Just((WALL_SECONDS.to_string(), false)),
        Just((CPU_SECONDS.to_string(), false)),
    ];
    let value = prop_oneof![
        number().prop_map(|n| (json!(n), n >= 0.0)),
        any::<u64>().prop_map(|n| (json!(n), true)),
        Just((json!("1"), false)),
        Just((Value::Null, false)),
    ];
    (
        proptest::collection::vec((name, value), 0..5),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(counters, not_object)| {
            if not_object {
                return Part {
                    key: "usage",
                    value: json!([1]),
                    valid: false,
                };
            }
            let mut obj = BTreeMap::new();
            for ((name, name_ok), (value, value_ok)) in counters {
                obj.insert(name, (value, name_ok && value_ok));
            }
            let valid = obj.values().all(|(_, ok)| *ok);
            Part {
                key: "usage",
                value: Value::Object(obj.into_iter().map(|(k, (v, _))| (k, v)).collect()),
                valid,
            }
        })
}

fn violation_part() -> impl Strategy<Value = Part> {
    let rule = prop_oneof![
        "[a-z-]{1,20}".prop_map(|s| (Some(json!(s)), true)),
        (MAX_NAME..MAX_NAME + 2).prop_map(|n| (Some(json!("r".repeat(n))), n <= MAX_NAME)),
        Just((Some(json!("")), false)),
        Just((None, false)),
        Just((Some(json!(3)), false)),
    ];
    (rule, proptest::option::of(text_value())).prop_map(|((rule, valid), detail)| {
        let mut obj = Map::new();
        if let Some(r) = rule {
            obj.insert("rule".into(), r);
        }
        if let Some(d) = detail {
            obj.insert("detail".into(), json!(d));
        }
        Part {
            key: "violation",
            value: Value::Object(obj),
            valid,
        }
    })
}

fn result_part() -> impl Strategy<Value = Part> {
    prop_oneof![
        proptest::collection::btree_map("[a-z]{1,8}", any::<i64>(), 0..5).prop_map(|m| Part {
            key: "result",
            value: json!(m),
            valid: true
        }),
        (MAX_RESULT_BYTES - 16..MAX_RESULT_BYTES + 16).prop_map(|n| {
            // `{"b":"…"}` is 8 bytes around the string.
            let value = json!({ "b": "x".repeat(n - 8) });
            Part {
                key: "result",
                value,
                valid: n <= MAX_RESULT_BYTES,
            }
        }),
        (1usize..=126).prop_map(|d| Part {
            key: "result",
            value: nested(d),
            valid: d <= MAX_RESULT_DEPTH,
        }),
        Just(Part {
            key: "result",
            value: json!([1]),
            valid: false
        }),
        Just(Part {
            key: "result",
            value: json!("done"),
            valid: false
        }),
    ]
}

fn fail_part() -> impl Strategy<Value = Part> {
    let retryable = prop_oneof![
        any::<bool>().prop_map(|b| (Some(json!(b)), true)),
        Just((None, true)),
        Just((Some(Value::Null), true)),
        Just((Some(json!("no")), false)),
        Just((Some(json!(0)), false)),
    ];
    let reason = prop_oneof![
        text_value().prop_map(|s| (Some(json!(s)), true)),
        Just((None, true)),
        Just((Some(json!(false)), false)),
    ];
    (retryable, reason).prop_map(|((retryable, r_ok), (reason, s_ok))| {
        let mut obj = Map::new();
        if let Some(r) = retryable {
            obj.insert("retryable".into(), r);
        }
        if let Some(s) = reason {
            obj.insert("reason".into(), s);
        }
        Part {
            key: "fail",
            value: Value::Object(obj),
            valid: r_ok && s_ok,
        }
    })
}

fn report_object() -> impl Strategy<Value = (Vec<Part>, Map<String, Value>)> {
    (
        proptest::option::of(progress_part()),
        proptest::option::of(usage_part()),
        proptest::option::of(violation_part()),
        proptest::option::of(result_part()),
        proptest::option::of(fail_part()),
        proptest::collection::btree_map(
            "[a-z]{1,6}",
            prop_oneof![Just(json!(1)), Just(json!([[]])), Just(Value::Null)],
            0..3,
        ),
    )
        .prop_map(|(p, u, v, r, f, unknown)| {
            let parts: Vec<Part> = [p, u, v, r, f].into_iter().flatten().collect();
            let mut extra = Map::new();
            for (k, v) in unknown {
                extra.insert(format!("x-{k}"), v);
            }
            (parts, extra)
        })
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn generated_reports_are_taken_whole_or_refused_naming_the_key(
        (parts, extra) in report_object(),
    ) {
        let mut obj = extra;
        for p in &parts {
            obj.insert(p.key.into(), p.value.clone());
        }
        let line = serde_json::to_vec(&Value::Object(obj)).expect("serialize");
        let parsed = match check_contract(&line) {
            Ok(parsed) => parsed,
            Err(broken) => return Err(TestCaseError::fail(broken)),
        };
        let bad: Vec<&str> = parts.iter().filter(|p| !p.valid).map(|p| p.key).collect();
        if line.len() > MAX_LINE {
            return Ok(());
        }
        match (&parsed, bad.as_slice()) {
            (Ok(report), []) => {
                for p in &parts {
                    let present = match p.key {
                        "progress" => report.progress.is_some(),
                        "violation" => report.violation.is_some(),
                        "result" => report.result.as_ref() == Some(&p.value),
                        "fail" => report.fail.is_some(),
                        _ => true,
                    };
                    prop_assert!(present, "{} lost from an accepted line", p.key);
                }
                if let Some(p) = parts.iter().find(|p| p.key == "progress")
                    && let Some(n) = p.value.get("percent").and_then(Value::as_f64)
                {
                    let want = n.clamp(0.0, 100.0).floor() as i32;
                    prop_assert_eq!(report.progress.as_ref().and_then(|p| p.percent), Some(want));
                }
            }
            (Err(ReportError::Invalid { key, .. }), [only]) => prop_assert_eq!(key, only),
            (Err(ReportError::Invalid { key, .. }), bad) => {
                prop_assert!(bad.contains(key), "{key} named, bad: {bad:?}")
            }
            (got, bad) => prop_assert!(false, "bad keys {bad:?}, got {got:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------
// The splitter: any chunking gives the same lines; oversize lines are dropped once
// ---------------------------------------------------------------------------------

fn stream() -> impl Strategy<Value = (Vec<Vec<u8>>, bool, Vec<usize>)> {
    let line = prop_oneof![
        4 => proptest::sample::select(seeds().to_vec())
            .prop_map(|l| l.into_iter().filter(|b| *b != b'\n').collect()),
        1 => proptest::sample::select(vec![0, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, 2 * MAX_LINE + 7])
            .prop_map(|n| vec![b'x'; n]),
    ];
    (
        proptest::collection::vec(line, 0..6),
        any::<bool>(),
        proptest::collection::vec(1usize..70_000, 0..8),
    )
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn any_chunking_splits_the_same_lines((lines, final_newline, cuts) in stream()) {
        let mut data = lines.join(&b'\n');
        if final_newline && !lines.is_empty() {
            data.push(b'\n');
        }
        let mut expected: Vec<Result<Vec<u8>, ()>> = Vec::new();
        let segments: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
        for (i, seg) in segments.iter().enumerate() {
            // The part after the last newline counts only when it is not empty.
            if i + 1 == segments.len() && seg.is_empty() {
                continue;
            }
            expected.push(if seg.len() > MAX_LINE { Err(()) } else { Ok(seg.to_vec()) });
        }

        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut got: Vec<Result<Vec<u8>, ()>> = Vec::new();
        let mut push = |l: Line<'_>| match l {
            Line::Text(t) => got.push(Ok(t.to_vec())),
            Line::TooLong => got.push(Err(())),
        };
        let mut splitter = LineSplitter::default();
        let mut last = 0;
        for cut in cuts.into_iter().chain([data.len()]) {
            splitter.feed(&data[last..cut], &mut push);
            last = cut;
        }
        splitter.finish(&mut push);
        let mut state = ReportState::default();
        for line in &got {
            match line {
                Ok(t) => {
                    prop_assert!(t.len() <= MAX_LINE);
                    state.line(t);
                }
                Err(()) => state.too_long(),
            }
        }
        let too_long = got.iter().filter(|l| l.is_err()).count();
        prop_assert!(state.take_rejected() as usize >= too_long);
        prop_assert_eq!(got.len(), expected.len());
        prop_assert!(got == expected, "lines differ");
    }
}
