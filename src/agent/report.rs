//! The report channel on the agent's side: splitting the file into bounded lines and
//! folding parsed reports (`core::report`) into the state written back to the item.

use serde_json::Value;

use crate::api::Counters;
use crate::core::report::{
    FailReport, MAX_LINE, ProgressReport, Report, ReportError, ViolationReport, parse_line,
};

/// Most counters an item's usage may carry (a budget allows as many).
const MAX_COUNTERS: usize = 32;

/// Everything reported so far for one attempt, plus what is still to be written.
#[derive(Clone, Debug, Default)]
pub struct ReportState {
    pub progress: ProgressReport,
    /// Reported counters (cumulative); the measured `wallSeconds`/`cpuSeconds` are
    /// added at write time.
    pub usage: Counters,
    /// The highest value of each counter written to the item this attempt: what a later
    /// write may not go below (see [`ReportState::not_below_written`]).
    written_usage: Counters,
    pub result: Option<Value>,
    /// Why a `result` line was refused (too large, not an object): a command that
    /// exits 0 without a usable result must not look like a success.
    pub result_refused: Option<String>,
    pub fail: Option<FailReport>,
    /// The latest violation and how many were reported.
    pub violation: Option<ViolationReport>,
    pub violations: u32,
    /// Progress or usage changed since the last write.
    pub changed: bool,
    /// A violation arrived since the last write.
    pub violation_pending: bool,
    /// Lines refused since the last [`ReportState::take_rejected`].
    rejected: u64,
    /// Lines refused in this attempt, for rate-limiting the warnings.
    rejected_total: u64,
}

/// Refused lines logged in full per attempt; after that one in [`LOG_EVERY`]: a command
/// printing junk in a loop must not flood the agent's log (the metric counts them all).
const LOG_FIRST: u64 = 10;
const LOG_EVERY: u64 = 1000;

fn log_refusal(total: u64) -> bool {
    total <= LOG_FIRST || total.is_multiple_of(LOG_EVERY)
}

impl ReportState {
    /// Folds one line in. A refused line is logged and counted, never fatal.
    pub fn line(&mut self, line: &[u8]) {
        match parse_line(line) {
            Ok(report) => self.apply(report),
            Err(err) => {
                if let ReportError::Invalid { key: "result", why } = &err {
                    self.result_refused = Some(why.clone());
                }
                self.refuse(&err.to_string(), line);
            }
        }
    }

    /// A line longer than [`MAX_LINE`], already skipped by the splitter.
    pub fn too_long(&mut self) {
        self.rejected += 1;
        self.rejected_total += 1;
        if log_refusal(self.rejected_total) {
            tracing::warn!(
                refused_so_far = self.rejected_total,
                "report line over {MAX_LINE} bytes dropped"
            );
        }
    }

    fn refuse(&mut self, why: &str, line: &[u8]) {
        self.rejected += 1;
        self.rejected_total += 1;
        if !log_refusal(self.rejected_total) {
            return;
        }
        // Log the first bytes only: a bad line can be 64 KiB.
        let start = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
        tracing::warn!(error = %why, line = %start, refused_so_far = self.rejected_total, "report line dropped");
    }

    pub fn take_rejected(&mut self) -> u64 {
        std::mem::take(&mut self.rejected)
    }

    /// Only a real change marks the state for writing, so a command that repeats
    /// itself costs no API writes.
    pub fn apply(&mut self, report: Report) {
        if let Some(p) = report.progress {
            // Fields merge: a bare percent keeps the last message and checkpoint.
            let mut next = self.progress.clone();
            if p.percent.is_some() {
                next.percent = p.percent;
            }
            if p.message.is_some() {
                next.message = p.message;
            }
            if p.checkpoint.is_some() {
                next.checkpoint = p.checkpoint;
            }
            if next != self.progress {
                self.progress = next;
                self.changed = true;
            }
        }
        for (name, value) in report.usage {
            if !self.usage.contains_key(&name) && self.usage.len() >= MAX_COUNTERS {
                tracing::warn!(counter = %name, "more than {MAX_COUNTERS} usage counters; ignoring the new one");
                continue;
            }
            if self.usage.get(&name) != Some(&value) {
                self.usage.insert(name, value);
                self.changed = true;
            }
        }
        if let Some(v) = report.violation {
            self.violations = self.violations.saturating_add(1);
            self.violation = Some(v);
            self.violation_pending = true;
        }
        if let Some(r) = report.result {
            self.result = Some(r);
            self.result_refused = None;
        }
        if let Some(f) = report.fail {
            self.fail = Some(f);
        }
    }
}

/// Splits a byte stream into lines without ever holding more than one line of at most
/// [`MAX_LINE`] bytes: a longer line is skipped up to its newline and reported once.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    discarding: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Text(&'a [u8]),
    TooLong,
}

impl LineSplitter {
    pub fn feed(&mut self, mut chunk: &[u8], mut on_line: impl FnMut(Line<'_>)) {
        while !chunk.is_empty() {
            let (piece, ends) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let piece = &chunk[..i];
                    chunk = &chunk[i + 1..];
                    (piece, true)
                }
                None => {
                    let piece = chunk;
                    chunk = &[];
                    (piece, false)
                }
            };
            if self.discarding {
                self.discarding = !ends;
                continue;
            }
            if self.partial.len() + piece.len() > MAX_LINE {
                self.partial.clear();
                on_line(Line::TooLong);
                self.discarding = !ends;
                continue;
            }
            match (ends, self.partial.is_empty()) {
                (true, true) => on_line(Line::Text(piece)),
                (true, false) => {
                    self.partial.extend_from_slice(piece);
                    on_line(Line::Text(&self.partial));
                    self.partial.clear();
                }
                (false, _) => self.partial.extend_from_slice(piece),
            }
        }
    }

    /// The stream ended: a last line without a newline still counts.
    pub fn finish(&mut self, mut on_line: impl FnMut(Line<'_>)) {
        if !self.discarding && !self.partial.is_empty() {
            on_line(Line::Text(&self.partial));
        }
        self.partial.clear();
        self.discarding = false;
    }
}

/// At most `max` bytes, cut on a character boundary.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

// === impl ReportState: usage only rises ===

impl ReportState {
    /// `usage` with no counter below what an earlier write of this attempt said. Usage is
    /// cumulative, and the agent admission policy refuses a holder's write that lowers
    /// a counter (a forged one could escape its budget); a command that reports a
    /// smaller total, or a CPU sum that drops when a child process exits, must not turn
    /// an honest write into a refused one.
    pub fn not_below_written(&self, mut usage: Counters) -> Counters {
        for (name, high) in &self.written_usage {
            let v = usage.entry(name.clone()).or_insert(*high);
            if *v < *high {
                *v = *high;
            }
        }
        usage
    }

    /// [`Self::not_below_written`], remembered as the new floor.
    pub fn monotonic_usage(&mut self, usage: Counters) -> Counters {
        let usage = self.not_below_written(usage);
        self.written_usage.clone_from(&usage);
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_lines_are_logged_at_first_then_rarely() {
        let logged: Vec<u64> = (1..=3000).filter(|n| log_refusal(*n)).collect();
        assert_eq!(logged, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1000, 2000, 3000]);
    }
    use crate::api::MAX_RESULT_BYTES;
    use serde_json::json;

    fn state(lines: &[&str]) -> ReportState {
        let mut s = ReportState::default();
        for l in lines {
            s.line(l.as_bytes());
        }
        s
    }

    #[test]
    fn folds_every_kind_of_line() {
        let s = state(&[
            r#"{"progress": {"percent": 40, "message": "m", "checkpoint": "c"}}"#,
            r#"{"usage": {"tokens": 1200, "cost": 0.03}}"#,
            r#"{"violation": {"rule": "no-network", "detail": "curl"}}"#,
            r#"{"result": {"ok": true}}"#,
            r#"{"fail": {"reason": "BadInput", "retryable": false}}"#,
        ]);
        assert_eq!(s.progress.percent, Some(40));
        assert_eq!(s.usage["tokens"], 1200.0);
        assert_eq!(
            s.violation.as_ref().map(|v| v.rule.as_str()),
            Some("no-network")
        );
        assert_eq!(s.result, Some(json!({"ok": true})));
        assert_eq!(
            s.fail.as_ref().map(|f| (f.reason.as_str(), f.retryable)),
            Some(("BadInput", false))
        );
        assert!(s.changed && s.violation_pending);
    }

    #[test]
    fn malformed_lines_are_counted_not_fatal() {
        let mut s = state(&[
            "not json",
            "[1]",
            r#"{"usage": {"tokens": -1}}"#,
            r#"{"progress": {"percent": 5}}"#,
        ]);
        assert_eq!(s.take_rejected(), 3);
        assert_eq!(s.take_rejected(), 0);
        assert_eq!(s.progress.percent, Some(5));
    }

    #[test]
    fn an_oversized_result_is_remembered() {
        let big = format!(
            r#"{{"result": {{"blob": "{}"}}}}"#,
            "x".repeat(MAX_RESULT_BYTES)
        );
        let s = state(&[&big]);
        assert!(s.result.is_none());
        assert!(
            s.result_refused
                .as_deref()
                .is_some_and(|w| w.contains("limit")),
            "{:?}",
            s.result_refused
        );
    }

    #[test]
    fn only_real_changes_mark_for_writing() {
        let mut s = state(&[r#"{"progress": {"percent": 10}}"#]);
        assert!(s.changed);
        s.changed = false;
        s.line(br#"{"progress": {"percent": 10}}"#);
        assert!(!s.changed, "same percent again is no change");
        s.line(br#"{"progress": {"message": "m"}}"#);
        assert!(s.changed);
        assert_eq!(s.progress.percent, Some(10), "fields merge");
        s.changed = false;
        s.line(br#"{"usage": {"tokens": 5}}"#);
        s.changed = false;
        s.line(br#"{"usage": {"tokens": 5}}"#);
        assert!(!s.changed);
    }

    #[test]
    fn written_usage_never_goes_down() {
        let mut s = ReportState::default();
        let first = s.monotonic_usage([("tokens".into(), 10.0), ("cpuSeconds".into(), 2.0)].into());
        assert_eq!(first["tokens"], 10.0);
        // A smaller total and a vanished counter: the earlier values stand.
        let second = s.monotonic_usage([("tokens".into(), 4.0)].into());
        assert_eq!((second["tokens"], second["cpuSeconds"]), (10.0, 2.0));
        let third = s.monotonic_usage([("tokens".into(), 12.0), ("cpuSeconds".into(), 1.5)].into());
        assert_eq!((third["tokens"], third["cpuSeconds"]), (12.0, 2.0));
        // The final write uses the floor without moving it.
        let last = s.not_below_written([("cost".into(), 0.5)].into());
        assert_eq!((last["tokens"], last["cost"]), (12.0, 0.5));
    }

    #[test]
    fn counters_are_bounded() {
        let mut s = ReportState::default();
        for i in 0..100 {
            s.line(format!(r#"{{"usage": {{"c{i}": 1}}}}"#).as_bytes());
        }
        assert_eq!(s.usage.len(), MAX_COUNTERS);
    }

    fn split(chunks: &[&[u8]]) -> Vec<Result<String, ()>> {
        let mut sp = LineSplitter::default();
        let mut out = vec![];
        let mut push = |l: Line<'_>| {
            out.push(match l {
                Line::Text(t) => Ok(String::from_utf8_lossy(t).into_owned()),
                Line::TooLong => Err(()),
            })
        };
        for c in chunks {
            sp.feed(c, &mut push);
        }
        sp.finish(&mut push);
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        assert_eq!(
            split(&[b"a\nb", b"c\n", b"d"]),
            vec![Ok("a".into()), Ok("bc".into()), Ok("d".into())]
        );
        assert_eq!(
            split(&[b"\n\n"]),
            vec![Ok(String::new()), Ok(String::new())]
        );
    }

    #[test]
    fn oversized_lines_are_dropped_once_and_the_next_line_survives() {
        let big = vec![b'x'; MAX_LINE + 10];
        let out = split(&[&big[..40_000], &big[40_000..], b"tail\nok\n"]);
        assert_eq!(out, vec![Err(()), Ok("ok".into())]);
        let exact = vec![b'y'; MAX_LINE];
        let out = split(&[&exact, b"\n"]);
        assert_eq!(out.len(), 1);
        assert!(out[0].is_ok(), "a line of exactly the limit is accepted");
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("abc", 10), "abc");
    }
}
