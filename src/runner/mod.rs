//! The runner (`triad runner -- <work command…>`): the process the work container
//! starts as. It holds no credential and talks to nobody but the agent container, over
//! the socket in the pod's shared `emptyDir` ([`protocol`]).
//!
//! | Side | Does |
//! |---|---|
//! | agent container | claims, heartbeats, writes status: the only holder of the pod's token |
//! | init container | `triad runner install /triad/bin`: copies this binary for the work container |
//! | work container | `/triad/bin/triad runner -- <command>`: the user's image, env and volumes |
//!
//! Per item the runner starts the command in its own process group (through the work
//! guard, so nothing outlives the runner even when it is not the container's PID 1),
//! measures its CPU and wall time, and signals the group when the agent says so. In
//! stream mode it keeps one process for many items, feeding each as a JSON line on
//! stdin and copying the process's stdout into the item's report file until a
//! `{"done": …}` line.
//!
//! When the agent goes away mid-item (its container restarted, the pod is deleted) the
//! runner ends the work: SIGTERM, then SIGKILL after the queue's `cancelGraceSeconds`.
//! The attempt is then the supervisor's to fence out; no one may finish it from here.

pub mod protocol;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use self::protocol::{Exit, Exited, FromRunner, Hello, Mode, StartItem, StopSignal, ToRunner};
use crate::agent::report::{Line, LineSplitter};
use crate::agent::work::{self, Launch, ReportDir, Work};
use crate::core::attempt_log;

/// How often a running item's CPU time is sent to the agent.
const USAGE_EVERY: Duration = Duration::from_secs(1);

pub struct RunnerConfig {
    pub socket: PathBuf,
    pub mode: Mode,
    pub command: Vec<String>,
    /// Start per-item work under the guard (this binary re-executed); off only where
    /// this binary is not `triad` (unit tests).
    pub guard_work: bool,
}

/// Copies this binary to `<dir>/triad`, executable by any user: the init container's
/// job, so the work container can start from an image that has never heard of Triad.
pub fn install(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let to = dir.join("triad");
    let tmp = dir.join(".triad.tmp");
    std::fs::copy("/proc/self/exe", &tmp)
        .with_context(|| format!("copying the runner to {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &to)?;
    println!("installed the Triad runner at {}", to.display());
    Ok(())
}

/// Serves agents until SIGTERM arrives while no agent is connected, or the agent that
/// was connected when it arrived goes away.
pub async fn run(mut cfg: RunnerConfig) -> anyhow::Result<()> {
    crate::agent::config::resolve_self(&mut cfg.command);
    crate::agent::config::check_command(&cfg.command).map_err(anyhow::Error::msg)?;
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    // A socket left by an earlier run of this container would refuse the bind.
    let _ = std::fs::remove_file(&cfg.socket);
    let listener = UnixListener::bind(&cfg.socket)
        .with_context(|| format!("listening on {}", cfg.socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // The agent container may run as another user; the socket is the only thing in
        // the shared volume it needs to open for writing.
        std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o666))?;
    }
    let reports = cfg
        .socket
        .parent()
        .unwrap_or(Path::new(protocol::RUN_DIR))
        .join("reports");
    std::fs::create_dir_all(&reports)?;
    tracing::info!(socket = %cfg.socket.display(), mode = ?cfg.mode, command = ?cfg.command, "runner waiting for the agent");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stream_proc: Option<StreamProc> = None;
    loop {
        let conn = tokio::select! {
            r = listener.accept() => r.map(|(s, _)| s),
            _ = term.recv() => {
                tracing::info!("asked to stop with no agent connected");
                return Ok(());
            }
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                continue;
            }
        };
        tracing::info!("agent connected");
        let mut session = Session {
            cfg: &cfg,
            reports: &reports,
            stream: &mut stream_proc,
        };
        let stop = session.serve(conn, &mut term).await;
        tracing::info!("agent disconnected");
        if stop {
            return Ok(());
        }
    }
}

/// One connected agent.
struct Session<'a> {
    cfg: &'a RunnerConfig,
    reports: &'a Path,
    stream: &'a mut Option<StreamProc>,
}

/// The item being run.
struct Current {
    item: String,
    attempt: i32,
    started: Instant,
    grace: Duration,
    run: Run,
    /// Kept until the agent has read it (`done`).
    report: ReportDir,
}

enum Run {
    PerItem(Work),
    /// Stream mode: the process belongs to the session's [`StreamProc`]; this is the
    /// CPU time of its group when the item started.
    Stream {
        cpu_at_start: f64,
    },
}

impl Session<'_> {
    /// Returns whether the runner should exit (SIGTERM came during this session).
    async fn serve(&mut self, conn: UnixStream, term: &mut tokio::signal::unix::Signal) -> bool {
        let (read, mut write) = conn.into_split();
        let (tx, mut from_agent) = mpsc::channel::<std::io::Result<ToRunner>>(16);
        let reader = tokio::spawn(async move {
            let mut r = protocol::Reader::new(read);
            loop {
                let next = r.next::<ToRunner>().await.transpose();
                let end = !matches!(next, Some(Ok(_)));
                if tx.send(next.unwrap_or_else(|| Err(eof()))).await.is_err() || end {
                    return;
                }
            }
        });
        let hello = FromRunner::Hello(Hello {
            version: env!("CARGO_PKG_VERSION").into(),
            mode: self.cfg.mode,
        });
        let mut terminating = false;
        let mut current: Option<Current> = None;
        let mut finished: Option<ReportDir> = None;
        let mut usage = tokio::time::interval(USAGE_EVERY);
        usage.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = send(&mut write, &hello).await;
        while connected {
            tokio::select! {
                msg = from_agent.recv() => match msg {
                    Some(Ok(ToRunner::Start(start))) => {
                        finished = None;
                        if current.is_some() {
                            connected = send(&mut write, &FromRunner::StartFailed {
                                error: "an item is already running".into() }).await;
                            continue;
                        }
                        // Bracket the attempt in this container's log before the work
                        // can write to it (`kubectl triad logs --attempt`).
                        println!("{}", attempt_log::begin_line(&start.item, start.attempt));
                        match self.start(&start).await {
                            Ok((c, pid)) => {
                                let report = c.report.path.clone();
                                current = Some(c);
                                connected = send(&mut write, &FromRunner::Started { pid, report }).await;
                            }
                            Err(e) => {
                                println!("{}", attempt_log::end_line(&start.item, start.attempt));
                                connected = send(&mut write, &FromRunner::StartFailed {
                                    error: format!("{e:#}") }).await;
                            }
                        }
                    }
                    Some(Ok(ToRunner::Signal(signal))) => {
                        if let Some(c) = &current {
                            self.signal(c, signal);
                        }
                    }
                    Some(Ok(ToRunner::Done {})) => finished = None,
                    Some(Ok(ToRunner::Shutdown {})) => {
                        tracing::info!("the agent is exiting for good; so is the runner");
                        terminating = true;
                        connected = false;
                    }
                    Some(Err(e)) => {
                        if e.kind() != std::io::ErrorKind::UnexpectedEof {
                            tracing::warn!(error = %e, "the agent sent something unreadable; closing");
                        }
                        connected = false;
                    }
                    None => connected = false,
                },
                exited = wait(&mut current, self.stream), if current.is_some() => {
                    if let Some(c) = current.take() {
                        println!("{}", attempt_log::end_line(&c.item, c.attempt));
                        connected = send(&mut write, &FromRunner::Exited(exited)).await;
                        finished = Some(c.report);
                    }
                }
                _ = usage.tick(), if current.is_some() => {
                    if let Some(c) = &current {
                        let cpu_seconds = self.cpu_so_far(c);
                        connected = send(&mut write, &FromRunner::Usage { cpu_seconds }).await;
                    }
                }
                _ = term.recv() => {
                    // The agent got the same signal and drains: it tells us when to stop
                    // the work, and disconnects when it is done.
                    tracing::info!("asked to stop; waiting for the agent to finish");
                    terminating = true;
                }
            }
        }
        reader.abort();
        drop(finished);
        if let Some(c) = current.take() {
            // The agent that held this item is gone: the item is no longer ours to run.
            tracing::warn!(item = %c.item, attempt = c.attempt, "the agent went away mid-item; stopping the work");
            self.signal(&c, StopSignal::Term);
            let deadline = tokio::time::sleep(c.grace);
            tokio::pin!(deadline);
            let mut c = Some(c);
            tokio::select! {
                _ = wait(&mut c, self.stream) => {}
                _ = &mut deadline => {
                    if let Some(c) = &c {
                        self.signal(c, StopSignal::Kill);
                    }
                    wait(&mut c, self.stream).await;
                }
            }
            if let Some(c) = c {
                println!("{}", attempt_log::end_line(&c.item, c.attempt));
            }
        }
        terminating
    }

    async fn start(&mut self, start: &StartItem) -> anyhow::Result<(Current, i32)> {
        let report = ReportDir::create_in(self.reports, &start.item, start.attempt)
            .context("creating the report file")?;
        let grace = Duration::from_secs(start.cancel_grace_seconds);
        let (pid, run) = match self.cfg.mode {
            Mode::PerItem => {
                let env = vec![
                    ("TRIAD_ITEM".to_owned(), start.item.clone()),
                    ("TRIAD_ATTEMPT".to_owned(), start.attempt.to_string()),
                    ("TRIAD_PAYLOAD".to_owned(), start.payload.clone()),
                    (
                        "TRIAD_REPORT".to_owned(),
                        report.path.to_string_lossy().into_owned(),
                    ),
                ];
                let mut stdin = start.payload.clone().into_bytes();
                stdin.push(b'\n');
                let work = Work::spawn(Launch {
                    command: &self.cfg.command,
                    env,
                    stdin,
                    guarded: self.cfg.guard_work,
                })
                .context("starting the work command")?;
                (work.pid, Run::PerItem(work))
            }
            Mode::Stream => {
                if self.stream.as_mut().is_none_or(|p| !p.alive()) {
                    *self.stream = Some(
                        StreamProc::spawn(&self.cfg.command)
                            .context("starting the work command")?,
                    );
                }
                let Some(proc_) = self.stream.as_mut() else {
                    anyhow::bail!("the stream process is not running");
                };
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&report.path)?;
                let cpu_at_start = work::group_cpu_seconds(proc_.pid);
                proc_.feed(start, file).await?;
                (proc_.pid, Run::Stream { cpu_at_start })
            }
        };
        let current = Current {
            item: start.item.clone(),
            attempt: start.attempt,
            started: Instant::now(),
            grace,
            run,
            report,
        };
        Ok((current, pid))
    }

    fn signal(&self, current: &Current, signal: StopSignal) {
        let sig = match signal {
            StopSignal::Term => libc::SIGTERM,
            StopSignal::Kill => libc::SIGKILL,
        };
        match &current.run {
            Run::PerItem(w) => match signal {
                StopSignal::Term => w.terminate(),
                StopSignal::Kill => w.kill(),
            },
            Run::Stream { .. } => {
                if let Some(p) = self.stream.as_ref() {
                    work::signal_group(p.pid, sig);
                }
            }
        }
    }

    fn cpu_so_far(&self, current: &Current) -> f64 {
        match &current.run {
            Run::PerItem(w) => w.cpu_seconds_so_far(),
            Run::Stream { cpu_at_start } => self.stream.as_ref().map_or(0.0, |p| {
                (work::group_cpu_seconds(p.pid) - cpu_at_start).max(0.0)
            }),
        }
    }
}

/// Waits for the current item to end (pending forever when there is none).
async fn wait(current: &mut Option<Current>, stream: &mut Option<StreamProc>) -> Exited {
    let Some(c) = current.as_mut() else {
        return std::future::pending().await;
    };
    match &mut c.run {
        Run::PerItem(w) => match w.wait().await {
            Ok(f) => Exited {
                exit: f.exit,
                cpu_seconds: f.cpu_seconds,
                wall_seconds: f.wall_seconds,
                last_stderr: w.last_stderr_line(),
            },
            Err(e) => Exited {
                exit: Exit::Code(127),
                cpu_seconds: 0.0,
                wall_seconds: c.started.elapsed().as_secs_f64(),
                last_stderr: format!("lost track of the work command: {e}"),
            },
        },
        Run::Stream { cpu_at_start } => {
            let Some(p) = stream.as_mut() else {
                return Exited {
                    exit: Exit::Code(127),
                    cpu_seconds: 0.0,
                    wall_seconds: 0.0,
                    last_stderr: "the stream process is gone".into(),
                };
            };
            let cpu_before = (work::group_cpu_seconds(p.pid) - *cpu_at_start).max(0.0);
            let exit = p.item_end().await;
            let cpu = (work::group_cpu_seconds(p.pid) - *cpu_at_start).max(cpu_before);
            Exited {
                exit,
                cpu_seconds: (cpu * 1000.0).round() / 1000.0,
                wall_seconds: c.started.elapsed().as_secs_f64(),
                last_stderr: String::new(),
            }
        }
    }
}

fn eof() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the agent disconnected")
}

/// Sends one message; false when the agent is gone.
async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, message: &FromRunner) -> bool {
    write.write_all(&protocol::encode(message)).await.is_ok()
}

// === impl StreamProc ===

/// The long-lived work process of stream mode.
struct StreamProc {
    pid: i32,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: mpsc::Receiver<Vec<u8>>,
    /// The current item's report file, where stdout lines go. Written synchronously:
    /// [`StreamProc::item_end`] runs inside a `select!` and must be cancel-safe, so no
    /// await may come between taking a line from the channel and writing it.
    report: Option<std::fs::File>,
    exited: Option<Exit>,
    /// The stdout reader ended (the process closed stdout or exited).
    lines_closed: bool,
}

impl StreamProc {
    fn spawn(command: &[String]) -> std::io::Result<StreamProc> {
        let Some((program, args)) = command.split_first() else {
            return Err(std::io::Error::other("empty work command"));
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: runs in the forked child before exec; prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id().map_or(0, |p| p as i32);
        let stdout = child.stdout.take();
        let (tx, lines) = mpsc::channel(64);
        if let Some(out) = stdout {
            tokio::spawn(forward_lines(out, tx));
        }
        tracing::info!(pid, "stream process started");
        Ok(StreamProc {
            pid,
            stdin: child.stdin.take(),
            child,
            lines,
            report: None,
            exited: None,
            lines_closed: false,
        })
    }

    fn alive(&mut self) -> bool {
        self.exited.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Writes the item's line to the process and directs its stdout to `report`.
    async fn feed(&mut self, start: &StartItem, report: std::fs::File) -> std::io::Result<()> {
        let payload: serde_json::Value =
            serde_json::from_str(&start.payload).unwrap_or(serde_json::Value::Null);
        let line =
            serde_json::json!({"item": start.item, "attempt": start.attempt, "payload": payload});
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(std::io::Error::other("the stream process closed its stdin"));
        };
        stdin.write_all(&bytes).await?;
        stdin.flush().await?;
        self.report = Some(report);
        Ok(())
    }

    /// Copies stdout lines into the report until the item's `done` line (its exit
    /// code, 0 by default) or the process's end (its status). Cancel-safe: both awaits
    /// are, and nothing after them awaits.
    async fn item_end(&mut self) -> Exit {
        loop {
            tokio::select! {
                line = self.lines.recv() => match line {
                    Some(line) => {
                        self.copy(&line);
                        if let Some(code) = done_line(&line) {
                            self.report = None;
                            return Exit::Code(code);
                        }
                    }
                    None => {
                        // stdout closed: the process is ending; its status follows.
                        self.lines_closed = true;
                    }
                },
                status = self.child.wait() => {
                    // Lines it wrote before exiting still count.
                    while let Ok(line) = self.lines.try_recv() {
                        self.copy(&line);
                    }
                    let exit = status_exit(status);
                    self.exited = Some(exit);
                    self.report = None;
                    work::signal_group(self.pid, libc::SIGKILL);
                    return exit;
                }
            }
            if self.lines_closed {
                // Only the status is left to wait for (a closed channel would spin).
                let status = self.child.wait().await;
                let exit = status_exit(status);
                self.exited = Some(exit);
                self.report = None;
                return exit;
            }
        }
    }

    fn copy(&mut self, line: &[u8]) {
        use std::io::Write;
        if let Some(report) = self.report.as_mut() {
            let mut l = Vec::with_capacity(line.len() + 1);
            l.extend_from_slice(line);
            l.push(b'\n');
            // One write per line, so the agent's tail never sees half of one for long.
            let _ = report.write_all(&l);
        }
    }
}

fn status_exit(status: std::io::Result<std::process::ExitStatus>) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            _ => Exit::Code(127),
        },
        Err(_) => Exit::Code(127),
    }
}

/// The exit code a stream-mode `{"done": …}` line ends its item with: `{"done": {}}` or
/// `{"done": true}` is 0, `{"done": {"exitCode": 3}}` is 3.
pub fn done_line(line: &[u8]) -> Option<i32> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let done = value.as_object()?.get("done")?;
    match done {
        serde_json::Value::Bool(true) => Some(0),
        serde_json::Value::Object(o) => Some(
            o.get("exitCode")
                .and_then(serde_json::Value::as_i64)
                .map_or(0, |c| c.clamp(0, 255) as i32),
        ),
        _ => None,
    }
}

/// Sends the stream process's stdout on as lines, split by the report tail's own
/// [`LineSplitter`]: lines over [`crate::core::report::MAX_LINE`] are dropped (the report
/// would refuse them anyway) and said on stderr.
async fn forward_lines(mut out: impl tokio::io::AsyncRead + Unpin, tx: mpsc::Sender<Vec<u8>>) {
    use tokio::io::AsyncReadExt;
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = out.read(&mut buf).await.unwrap_or(0);
        let mut lines = Vec::new();
        let mut collect = |line: Line<'_>| match line {
            Line::Text(text) => lines.push(text.to_vec()),
            Line::TooLong => eprintln!("triad runner: dropped a stdout line over 64 KiB"),
        };
        if n == 0 {
            splitter.finish(&mut collect);
        } else {
            splitter.feed(&buf[..n], &mut collect);
        }
        for line in lines {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if n == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::agent::remote::{RunnerLink, StartError};

    /// A runner serving `script` (under `sh -c`) on a socket in a fresh directory.
    fn serve(script: &str, mode: Mode) -> (PathBuf, tokio::task::JoinHandle<()>) {
        let dir =
            std::env::temp_dir().join(format!("triad-runner-test-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("runner.sock");
        let cfg = RunnerConfig {
            socket: socket.clone(),
            mode,
            command: vec!["sh".into(), "-c".into(), script.into()],
            guard_work: false,
        };
        let task = tokio::spawn(async move {
            let _ = run(cfg).await;
        });
        (socket, task)
    }

    async fn link(socket: &Path) -> RunnerLink {
        RunnerLink::connect_until(socket, tokio::time::sleep(Duration::from_secs(10)))
            .await
            .expect("the runner answers")
    }

    fn item(n: i32, payload: &str) -> StartItem {
        StartItem {
            item: format!("ns/item-{n}"),
            attempt: 1,
            payload: payload.into(),
            cancel_grace_seconds: 5,
        }
    }

    async fn start(l: RunnerLink, s: StartItem) -> crate::agent::remote::RemoteWork {
        match l.start(s).await {
            Ok(w) => w,
            Err(StartError::Refused(_, e)) => panic!("refused: {e}"),
            Err(StartError::Lost) => panic!("lost"),
        }
    }

    #[tokio::test]
    async fn per_item_work_gets_its_payload_and_reports_through_the_shared_file() {
        let (socket, task) = serve(
            r#"read -r p; echo "{\"result\": $p}" >> "$TRIAD_REPORT"; echo "$TRIAD_ITEM $TRIAD_ATTEMPT" >&2; exit 3"#,
            Mode::PerItem,
        );
        let l = link(&socket).await;
        assert_eq!(l.hello.mode, Mode::PerItem);
        let mut w = start(l, item(1, r#"{"a":1}"#)).await;
        let done = tokio::time::timeout(Duration::from_secs(10), w.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.exit, Exit::Code(3));
        assert_eq!(w.last_stderr_line(), "ns/item-1 1");
        let report = std::fs::read_to_string(&w.report).unwrap();
        assert_eq!(report, "{\"result\": {\"a\":1}}\n");
        let path = w.report.clone();
        let l = w.finish();
        // Done removes the report once the next message is read; a second item runs on
        // the same link.
        let mut w = start(l, item(2, "{}")).await;
        assert!(!path.exists(), "the first item's report is gone");
        let done = w.wait().await.unwrap();
        assert_eq!(done.exit, Exit::Code(3));
        task.abort();
    }

    #[tokio::test]
    async fn the_runner_exits_when_the_agent_exits_for_good() {
        let (socket, task) = serve("true", Mode::PerItem);
        let mut w = start(link(&socket).await, item(1, "{}")).await;
        assert_eq!(w.wait().await.unwrap().exit, Exit::Code(0));
        w.finish().shutdown().await;
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the runner exited")
            .expect("cleanly");
    }

    #[tokio::test]
    async fn a_cancel_crosses_to_the_works_process_group() {
        let (socket, task) = serve("sleep 30 & wait", Mode::PerItem);
        let mut w = start(link(&socket).await, item(1, "{}")).await;
        w.terminate();
        let done = tokio::time::timeout(Duration::from_secs(10), w.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.exit, Exit::Signal(libc::SIGTERM));
        task.abort();
    }

    #[tokio::test]
    async fn the_work_stops_when_the_agent_goes_away() {
        let dir =
            std::env::temp_dir().join(format!("triad-runner-pid-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let (socket, task) = serve(
            &format!("echo $$ > {}; exec sleep 60", pidfile.display()),
            Mode::PerItem,
        );
        let w = start(link(&socket).await, item(1, "{}")).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Ok(p) = std::fs::read_to_string(&pidfile)
                && let Ok(p) = p.trim().parse::<i32>()
            {
                break p;
            }
            assert!(Instant::now() < deadline, "the work never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(w);
        let deadline = Instant::now() + Duration::from_secs(10);
        // A zombie is gone as far as work goes: it runs nothing.
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
        {
            assert!(Instant::now() < deadline, "the work outlived its agent");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The runner serves the next agent.
        let mut w = start(link(&socket).await, item(2, "{}")).await;
        w.kill();
        assert_eq!(w.wait().await.unwrap().exit, Exit::Signal(libc::SIGKILL));
        task.abort();
    }

    #[tokio::test]
    async fn stream_mode_feeds_items_to_one_process() {
        let (socket, task) = serve(
            r#"n=0; while read -r line; do n=$((n+1)); echo "{\"progress\": {\"percent\": $n}}"; case "$line" in *fail*) echo '{"done": {"exitCode": 2}}';; *hang*) sleep 60;; *) echo "{\"done\": {}, \"result\": {\"pid\": $$}}";; esac; done"#,
            Mode::Stream,
        );
        let l = link(&socket).await;
        assert_eq!(l.hello.mode, Mode::Stream);
        let mut w = start(l, item(1, r#"{"x":1}"#)).await;
        let first_pid = w.pid;
        assert_eq!(w.wait().await.unwrap().exit, Exit::Code(0));
        let report = std::fs::read_to_string(&w.report).unwrap();
        assert!(
            report.starts_with("{\"progress\": {\"percent\": 1}}\n"),
            "{report}"
        );
        assert!(
            report.contains(&format!("\"pid\": {first_pid}")),
            "{report}"
        );
        let mut w = start(w.finish(), item(2, r#"{"fail":true}"#)).await;
        assert_eq!(w.pid, first_pid, "the same process");
        assert_eq!(w.wait().await.unwrap().exit, Exit::Code(2));
        let report = std::fs::read_to_string(&w.report).unwrap();
        assert!(
            report.starts_with("{\"progress\": {\"percent\": 2}}\n"),
            "{report}"
        );
        // A cancelled item ends the process; the next item gets a new one.
        let mut w = start(w.finish(), item(3, r#"{"x":1}"#)).await;
        let third = w.wait().await.unwrap();
        assert_eq!(third.exit, Exit::Code(0));
        // One that never ends by itself: only the kill ends it.
        let mut w = start(w.finish(), item(4, r#"{"hang":true}"#)).await;
        w.kill();
        assert_eq!(w.wait().await.unwrap().exit, Exit::Signal(libc::SIGKILL));
        let mut w = start(w.finish(), item(5, "{}")).await;
        assert_ne!(w.pid, first_pid, "a new process after the kill");
        assert_eq!(w.wait().await.unwrap().exit, Exit::Code(0));
        task.abort();
    }

    #[test]
    fn done_lines_end_an_item_with_an_exit_code() {
        assert_eq!(done_line(br#"{"done": {}}"#), Some(0));
        assert_eq!(done_line(br#"{"done": true}"#), Some(0));
        assert_eq!(
            done_line(br#"{"done": {"exitCode": 3}, "result": {"a": 1}}"#),
            Some(3)
        );
        assert_eq!(done_line(br#"{"done": {"exitCode": 999}}"#), Some(255));
        assert_eq!(done_line(br#"{"done": false}"#), None);
        assert_eq!(done_line(br#"{"progress": {"percent": 5}}"#), None);
        assert_eq!(done_line(b"not json"), None);
    }

    #[tokio::test]
    async fn stream_lines_are_bounded() {
        let mut input = b"one\n".to_vec();
        input.extend(vec![b'x'; crate::core::report::MAX_LINE + 5]);
        input.extend(b"\ntwo\nlast");
        let (tx, mut rx) = mpsc::channel(8);
        forward_lines(&input[..], tx).await;
        assert_eq!(rx.recv().await, Some(b"one".to_vec()));
        assert_eq!(
            rx.recv().await,
            Some(b"two".to_vec()),
            "the long line is dropped"
        );
        assert_eq!(rx.recv().await, Some(b"last".to_vec()));
        assert_eq!(rx.recv().await, None);
    }
}
