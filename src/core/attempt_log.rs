//! Where one attempt's output sits in an agent pod's log.
//!
//! An agent runs one item at a time, and its container log interleaves the agent's own
//! lines with the work's output. The agent brackets each attempt with a begin and an end
//! line on stdout; `kubectl triad logs <item> --attempt N` cuts the pod's log between the
//! two, so a user sees that attempt and nothing else.

const BEGIN: &str = "=== triad: begin ";
const END: &str = "=== triad: end ";

/// The line an agent prints before it starts attempt `attempt` of item `key`
/// (`<namespace>/<name>`).
pub fn begin_line(key: &str, attempt: i32) -> String {
    format!("{BEGIN}{key} attempt {attempt} ===")
}

/// The line an agent prints once attempt `attempt` of `key` is over.
pub fn end_line(key: &str, attempt: i32) -> String {
    format!("{END}{key} attempt {attempt} ===")
}

/// The lines of `log` from the begin line of `key`'s attempt `attempt` to its end line,
/// both included. `None` when the log has no begin line for it; open-ended (to the end of
/// the log) while the attempt still runs or when the agent died during it.
pub fn slice(log: &str, key: &str, attempt: i32) -> Option<String> {
    let begin = begin_line(key, attempt);
    let end = end_line(key, attempt);
    // Container runtimes may prefix lines (timestamps); match the marker anywhere in it.
    let mut lines = log.lines().skip_while(|l| !l.ends_with(&begin)).peekable();
    lines.peek()?;
    let mut out = String::new();
    for line in lines {
        out.push_str(line);
        out.push('\n');
        if line.ends_with(&end) {
            break;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> String {
        [
            "agent started",
            &begin_line("ns/a", 1),
            "a1 output",
            &end_line("ns/a", 1),
            "between",
            &begin_line("ns/b", 1),
            "b1 output",
            &end_line("ns/b", 1),
            &begin_line("ns/a", 2),
            "a2 output",
            "a2 more",
            &end_line("ns/a", 2),
            &begin_line("ns/a", 3),
            "a3 still running",
        ]
        .join("\n")
    }

    #[test]
    fn one_attempt_is_cut_between_its_markers() {
        let a2 = slice(&log(), "ns/a", 2).expect("attempt 2 is in the log");
        assert_eq!(
            a2,
            format!(
                "{}\na2 output\na2 more\n{}\n",
                begin_line("ns/a", 2),
                end_line("ns/a", 2)
            )
        );
        assert!(!slice(&log(), "ns/a", 1).unwrap().contains("b1"));
    }

    #[test]
    fn a_running_attempt_runs_to_the_end_of_the_log() {
        let a3 = slice(&log(), "ns/a", 3).expect("attempt 3 began");
        assert!(a3.ends_with("a3 still running\n"));
    }

    #[test]
    fn an_attempt_not_in_the_log_is_none() {
        assert_eq!(slice(&log(), "ns/a", 4), None);
        assert_eq!(slice(&log(), "ns/c", 1), None);
        // A prefix of another key does not match.
        assert_eq!(slice(&log(), "ns/", 1), None);
    }
}
