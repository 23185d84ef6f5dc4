//! The agent ↔ runner protocol: JSON lines over a unix socket in the pod's shared
//! `emptyDir` (`/triad/run/runner.sock`).
//!
//! ```text
//! runner → agent  {"hello": {"version": "0.1.0", "mode": "PerItem"}}
//! agent → runner  {"start": {"item": "ns/name", "attempt": 2, "payload": "{…}", "cancelGraceSeconds": 10}}
//! runner → agent  {"started": {"pid": 17, "report": "/triad/run/reports/…/report.jsonl"}}
//!                 or {"startFailed": {"error": "…"}}
//! runner → agent  {"usage": {"cpuSeconds": 0.42}}            (about once a second)
//! agent → runner  {"signal": "Term"} / {"signal": "Kill"}    (cancel, drain, fence-out)
//! runner → agent  {"exited": {"exit": {"code": 0}, "cpuSeconds": …, "wallSeconds": …, "lastStderr": "…"}}
//! agent → runner  {"done": {}}                                (report read: remove it)
//! agent → runner  {"shutdown": {}}                            (the agent exits for good)
//! ```
//!
//! The runner serves one agent at a time and one item at a time. Report lines do not
//! travel over the socket: the work writes them to the report file (per-item mode) or
//! to its stdout, which the runner copies into that file (stream mode), and the agent
//! tails the file as it always has. If the connection drops, the runner stops the work
//! (the agent that held its item is gone) and the agent fails the attempt (the work
//! container is gone). Neither side trusts the other with more than this: the socket
//! carries no credential, and a hostile work command that speaks it can only lie about
//! its own item, which it could do through its report anyway.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The socket, in the `emptyDir` shared by the agent and work containers.
pub const SOCKET: &str = "/triad/run/runner.sock";
/// Where the init container installs the runner, read-only in the work container.
pub const BIN_DIR: &str = "/triad/bin";
/// Where per-item report files live, in the shared `emptyDir`.
pub const RUN_DIR: &str = "/triad/run";
/// Longest protocol line either side accepts (a payload is at most 64 KiB of JSON,
/// escaped once more inside `start`).
pub const MAX_MESSAGE: usize = 512 * 1024;

/// How the work container runs items.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// One process per item: payload on stdin and in `TRIAD_PAYLOAD`, reports to
    /// `$TRIAD_REPORT`.
    #[default]
    PerItem,
    /// One long-lived process: items as JSON lines on stdin, report lines on stdout,
    /// each item ended by a `{"done": …}` line.
    Stream,
}

/// How the work process ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM to the work's process group: please stop.
    Term,
    /// SIGKILL to the work's process group: the grace is over.
    Kill,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StartItem {
    /// `namespace/name`.
    pub item: String,
    pub attempt: i32,
    /// The payload as JSON text (`{}` when there is none).
    pub payload: String,
    /// How long the runner waits after SIGTERM before SIGKILL when the agent is gone.
    pub cancel_grace_seconds: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum ToRunner {
    Start(StartItem),
    Signal(StopSignal),
    Done {},
    /// The agent exits for good (mortal, queues empty, drained): the runner exits 0
    /// too, so the pod can end.
    Shutdown {},
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub version: String,
    pub mode: Mode,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Exited {
    pub exit: Exit,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    #[serde(default)]
    pub last_stderr: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum FromRunner {
    Hello(Hello),
    Started {
        pid: i32,
        report: PathBuf,
    },
    StartFailed {
        error: String,
    },
    #[serde(rename_all = "camelCase")]
    Usage {
        cpu_seconds: f64,
    },
    Exited(Exited),
}

/// One message as a line.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Reads JSON-line messages from a stream, bounded per line.
pub struct Reader<R> {
    inner: tokio::io::BufReader<R>,
    line: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner: tokio::io::BufReader::new(inner),
            line: Vec::new(),
        }
    }

    /// The next message; `Ok(None)` at the end of the stream. A line that is too long
    /// or not a message is an error: the other side does not speak the protocol.
    pub async fn next<T: for<'de> Deserialize<'de>>(&mut self) -> std::io::Result<Option<T>> {
        use tokio::io::AsyncBufReadExt;
        // Cancel-safe: a partial line stays in `self.line` until the rest arrives.
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                return if self.line.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the connection ended in the middle of a message",
                    ))
                };
            }
            let (chunk, end) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if self.line.len() + chunk.len() > MAX_MESSAGE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a protocol message over {MAX_MESSAGE} bytes"),
                ));
            }
            self.line.extend_from_slice(chunk);
            let used = end.unwrap_or(buf.len());
            self.inner.consume(used);
            if end.is_some() {
                let parsed = serde_json::from_slice(&self.line).map(Some).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("not a runner protocol message: {e}"),
                    )
                });
                self.line.clear();
                return parsed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_one_spelling() {
        let start = ToRunner::Start(StartItem {
            item: "ns/a".into(),
            attempt: 2,
            payload: "{}".into(),
            cancel_grace_seconds: 5,
        });
        assert_eq!(
            String::from_utf8(encode(&start)).unwrap(),
            "{\"start\":{\"item\":\"ns/a\",\"attempt\":2,\"payload\":\"{}\",\"cancelGraceSeconds\":5}}\n"
        );
        assert_eq!(
            String::from_utf8(encode(&ToRunner::Signal(StopSignal::Term))).unwrap(),
            "{\"signal\":\"Term\"}\n"
        );
        assert_eq!(
            String::from_utf8(encode(&ToRunner::Done {})).unwrap(),
            "{\"done\":{}}\n"
        );
        let exited = FromRunner::Exited(Exited {
            exit: Exit::Signal(9),
            cpu_seconds: 0.5,
            wall_seconds: 1.0,
            last_stderr: "x".into(),
        });
        assert_eq!(
            String::from_utf8(encode(&exited)).unwrap(),
            "{\"exited\":{\"exit\":{\"signal\":9},\"cpuSeconds\":0.5,\"wallSeconds\":1.0,\"lastStderr\":\"x\"}}\n"
        );
        assert_eq!(
            String::from_utf8(encode(&FromRunner::Usage { cpu_seconds: 1.5 })).unwrap(),
            "{\"usage\":{\"cpuSeconds\":1.5}}\n"
        );
    }

    #[tokio::test]
    async fn the_reader_splits_lines_and_refuses_junk_and_floods() {
        let mut input = encode(&ToRunner::Done {});
        input.extend(encode(&ToRunner::Signal(StopSignal::Kill)));
        let mut r = Reader::new(&input[..]);
        assert_eq!(r.next::<ToRunner>().await.unwrap(), Some(ToRunner::Done {}));
        assert_eq!(
            r.next::<ToRunner>().await.unwrap(),
            Some(ToRunner::Signal(StopSignal::Kill))
        );
        assert_eq!(r.next::<ToRunner>().await.unwrap(), None);

        let mut r = Reader::new(&b"{\"nope\":1}\n"[..]);
        assert!(r.next::<ToRunner>().await.is_err());
        let flood = vec![b'x'; MAX_MESSAGE + 10];
        let mut r = Reader::new(&flood[..]);
        assert!(r.next::<ToRunner>().await.is_err());
        let mut r = Reader::new(&b"{\"done\":{}"[..]);
        assert!(r.next::<ToRunner>().await.is_err(), "cut mid-message");
    }
}
