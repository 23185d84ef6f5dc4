//! `triad simulate`: a work command that behaves like an AI agent as its payload says,
//! for demos and tests. It reports progress and usage on the report channel, and can
//! fail, stall, report a violation or return a result on request.

use std::io::{Read, Write};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The payload as JSON (default: $TRIAD_PAYLOAD, else stdin).
    #[arg(long)]
    pub payload: Option<String>,
    /// Stream mode (a pool's `workMode: Stream`): read items as JSON lines on stdin,
    /// report on stdout, end each with a `{"done": …}` line.
    #[arg(long)]
    pub stream: bool,
}

/// What the payload may ask for; unknown keys are ignored so real payloads work too.
#[derive(Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Plan {
    pub steps: u32,
    pub step_millis: u64,
    pub tokens_per_step: f64,
    pub cost_per_step: f64,
    /// Exit 1 on these attempts.
    pub fail_on_attempts: Vec<i32>,
    /// On this attempt report once, then hang without progress.
    pub stall_on_attempt: Option<i32>,
    pub violation: Option<ViolationPlan>,
    pub result: Option<Value>,
    pub exit_code: i32,
}

#[derive(Deserialize, Debug, PartialEq)]
pub struct ViolationPlan {
    pub rule: String,
    #[serde(default)]
    pub detail: Option<String>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            steps: 3,
            step_millis: 300,
            tokens_per_step: 0.0,
            cost_per_step: 0.0,
            fail_on_attempts: vec![],
            stall_on_attempt: None,
            violation: None,
            result: None,
            exit_code: 0,
        }
    }
}

/// What one step reports: progress, then cumulative usage.
pub fn step_lines(plan: &Plan, step: u32) -> Vec<Value> {
    let steps = plan.steps.max(1);
    let percent = (u64::from(step) * 100 / u64::from(steps)).min(100);
    let n = f64::from(step);
    vec![
        json!({"progress": {
            "percent": percent,
            "message": format!("step {step}/{steps}"),
            "checkpoint": format!("step-{step}"),
        }}),
        json!({"usage": {
            "tokens": n * plan.tokens_per_step,
            // Rounded so cumulative floats stay readable (not 0.30000000000000004).
            "cost": (n * plan.cost_per_step * 1e6).round() / 1e6,
        }}),
    ]
}

struct Reporter {
    out: Box<dyn Write>,
}

impl Reporter {
    fn open() -> anyhow::Result<Self> {
        let out: Box<dyn Write> = match std::env::var_os("TRIAD_REPORT") {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            // Run by hand: show the report lines.
            None => Box::new(std::io::stdout()),
        };
        Ok(Reporter { out })
    }

    fn send(&mut self, line: &Value) -> anyhow::Result<()> {
        // One write per line, so the runtime never sees half a line for long.
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }
}

fn read_payload(args: &SimulateArgs) -> anyhow::Result<String> {
    if let Some(p) = &args.payload {
        return Ok(p.clone());
    }
    if let Ok(p) = std::env::var("TRIAD_PAYLOAD")
        && !p.trim().is_empty()
    {
        return Ok(p);
    }
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    Ok(input)
}

pub fn parse_plan(payload: &str) -> anyhow::Result<Plan> {
    if payload.trim().is_empty() {
        return Ok(Plan::default());
    }
    let value: Value =
        serde_json::from_str(payload).map_err(|e| anyhow::anyhow!("payload is not JSON: {e}"))?;
    // serde would read a struct from an array too; a plan is an object.
    anyhow::ensure!(value.is_object(), "payload must be a JSON object");
    serde_json::from_value(value)
        .map_err(|e| anyhow::anyhow!("payload is not a simulation plan: {e}"))
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if args.stream {
        return stream().await;
    }
    let plan = parse_plan(&read_payload(&args)?)?;
    let attempt: i32 = std::env::var("TRIAD_ATTEMPT")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let mut report = Reporter::open()?;
    let code = play(&plan, attempt, &mut report).await?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// Plays one item's plan on `report`; returns the exit code it asks for.
async fn play(plan: &Plan, attempt: i32, report: &mut Reporter) -> anyhow::Result<i32> {
    if plan.fail_on_attempts.contains(&attempt) {
        eprintln!("simulate: failing attempt {attempt} as planned");
        return Ok(1);
    }
    if plan.stall_on_attempt == Some(attempt) {
        report.send(&json!({"progress": {"percent": 0, "message": "started; about to stall"}}))?;
        eprintln!("simulate: stalling attempt {attempt} as planned");
        std::future::pending::<()>().await;
    }
    for step in 1..=plan.steps {
        tokio::time::sleep(Duration::from_millis(plan.step_millis)).await;
        for line in step_lines(plan, step) {
            report.send(&line)?;
        }
        if step == 1
            && let Some(v) = &plan.violation
        {
            report.send(&json!({"violation": {"rule": v.rule, "detail": v.detail}}))?;
        }
    }
    if let Some(result) = &plan.result {
        report.send(&json!({ "result": result }))?;
    }
    if plan.exit_code != 0 {
        eprintln!("simulate: exiting with code {} as planned", plan.exit_code);
    }
    Ok(plan.exit_code)
}

/// One item as stream mode hands it over.
#[derive(Deserialize)]
struct StreamItem {
    #[serde(default)]
    attempt: Option<i32>,
    #[serde(default)]
    payload: Value,
}

/// Stream mode: one process, many items, each ended by a `done` line with its exit code.
async fn stream() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut report = Reporter {
        out: Box::new(std::io::stdout()),
    };
    while let Some(line) = lines.next_line().await? {
        let code = match serde_json::from_str::<StreamItem>(&line) {
            Ok(item) => {
                let payload = if item.payload.is_null() {
                    String::new()
                } else {
                    item.payload.to_string()
                };
                match parse_plan(&payload) {
                    Ok(plan) => play(&plan, item.attempt.unwrap_or(1), &mut report).await?,
                    Err(e) => {
                        eprintln!("simulate: {e}");
                        2
                    }
                }
            }
            Err(e) => {
                eprintln!("simulate: not a stream item: {e}");
                2
            }
        };
        report.send(&json!({"done": {"exitCode": code}}))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_camel_case_keys() {
        assert_eq!(parse_plan("").unwrap(), Plan::default());
        let p = parse_plan(r#"{"steps": 5, "stepMillis": 10, "tokensPerStep": 100, "failOnAttempts": [1, 2], "unknown": 1}"#).unwrap();
        assert_eq!(
            (
                p.steps,
                p.step_millis,
                p.tokens_per_step,
                p.fail_on_attempts
            ),
            (5, 10, 100.0, vec![1, 2])
        );
        assert!(parse_plan("[1]").is_err());
    }

    #[test]
    fn steps_report_progress_and_cumulative_usage() {
        let plan = Plan {
            steps: 4,
            tokens_per_step: 100.0,
            cost_per_step: 0.1,
            ..Plan::default()
        };
        let lines = step_lines(&plan, 3);
        assert_eq!(lines[0]["progress"]["percent"], 75);
        assert_eq!(lines[0]["progress"]["checkpoint"], "step-3");
        assert_eq!(lines[1]["usage"]["tokens"], 300.0);
        assert_eq!(lines[1]["usage"]["cost"], 0.3);
        assert_eq!(step_lines(&Plan::default(), 1)[1]["usage"]["tokens"], 0.0);
    }
}
