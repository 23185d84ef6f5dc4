//! Running the work command: one process group per item, the payload on stdin, the
//! report file tailed, wall and CPU time measured by the runtime itself.
//!
//! The child is spawned and reaped by a dedicated thread that blocks in `wait4`: that
//! gives the CPU time of the whole tree the command waited for (rusage), and it lets
//! the child carry `PR_SET_PDEATHSIG` safely (the signal fires when the *thread* that
//! spawned it ends, and this thread ends only after the child has been reaped).

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use super::report::{Line, LineSplitter, ReportState, cut};
use super::writer::Ending;
use crate::api::{FreeForm, MAX_PAYLOAD_BYTES, OutcomeKind, PAYLOAD_TOO_DEEP};
use crate::core::report::MAX_LINE;

pub use crate::runner::protocol::Exit;

#[derive(Clone, Copy, Debug)]
pub struct Finished {
    pub exit: Exit,
    /// User + system time of the command and every descendant it waited for.
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
}

/// What the command gets besides its argv.
pub struct Launch<'a> {
    pub command: &'a [String],
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    /// Run the command under the guard ([`run_guard`]), this binary re-executed.
    pub guarded: bool,
}

/// The payload as the work command gets it (JSON text; `{}` when there is none), or the
/// ending of an item that must not run: one whose payload is over 64 KiB or nested too
/// deep. Either fails permanently, since running it again would not help.
pub fn work_input(payload: Option<&FreeForm>) -> Result<String, Ending> {
    let payload = match payload {
        None => "{}".to_owned(),
        Some(FreeForm::Value(v)) => serde_json::to_string(v).unwrap_or_else(|_| "{}".into()),
        Some(FreeForm::TooDeep(deep)) => {
            return Err(Ending::new(
                OutcomeKind::FailedPermanently,
                PAYLOAD_TOO_DEEP,
                deep.payload_refusal(),
            ));
        }
    };
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Ending::new(
            OutcomeKind::FailedPermanently,
            "PayloadTooLarge",
            format!(
                "the payload is {} bytes, over the limit of {MAX_PAYLOAD_BYTES} bytes: pass large inputs by reference (for example an object-storage URL)",
                payload.len()
            ),
        ));
    }
    Ok(payload)
}

/// How the agent re-executes itself as the guard; `/proc/self/exe` keeps working when
/// the binary on disk is replaced while the agent runs.
const SELF_EXE: &str = "/proc/self/exe";
const GUARD_PARENT_ENV: &str = "TRIAD_GUARD_PARENT";
/// Signals the guard ignores (they are meant for the work) and restores for the work.
const PASSED_ON: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A started work command.
pub struct Work {
    /// Pid of the command, which is also its process group id.
    pub pid: i32,
    started: Instant,
    finished: oneshot::Receiver<std::io::Result<(Exit, f64)>>,
    last_stderr: Arc<Mutex<String>>,
}

impl Work {
    pub fn spawn(launch: Launch<'_>) -> std::io::Result<Work> {
        let Some((program, args)) = launch.command.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty work command",
            ));
        };
        let mut cmd = if launch.guarded {
            let mut c = std::process::Command::new(SELF_EXE);
            c.args(GUARD_ARGS)
                .arg(program)
                .args(args)
                .env(GUARD_PARENT_ENV, std::process::id().to_string());
            c
        } else {
            let mut c = std::process::Command::new(program);
            c.args(args);
            // Without the guard at least the command itself dies with the agent.
            // SAFETY: runs in the forked child before exec; prctl is async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            c
        };
        cmd.envs(launch.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            // Its own group: cancel and drain signal the whole tree, and the pod's
            // signals to the agent do not reach the work directly.
            .process_group(0);
        let (pid_tx, pid_rx) = std::sync::mpsc::channel::<std::io::Result<i32>>();
        let (done_tx, done_rx) = oneshot::channel();
        let last_stderr = Arc::new(Mutex::new(String::new()));
        let stderr_sink = last_stderr.clone();
        let stdin = launch.stdin;
        std::thread::Builder::new()
            .name("triad-work".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = pid_tx.send(Err(e));
                        return;
                    }
                };
                let pid = child.id() as i32;
                let _ = pid_tx.send(Ok(pid));
                if let Some(mut input) = child.stdin.take() {
                    // A command that never reads stdin must not block the agent: write
                    // from a helper thread and ignore EPIPE.
                    let _ = std::thread::Builder::new()
                        .name("triad-work-stdin".into())
                        .spawn(move || {
                            let _ = input.write_all(&stdin);
                        });
                }
                if let Some(err) = child.stderr.take() {
                    let _ = std::thread::Builder::new()
                        .name("triad-work-stderr".into())
                        .spawn(move || forward_stderr(err, &stderr_sink));
                }
                let _ = done_tx.send(wait4(pid));
            })?;
        let pid = pid_rx.recv().map_err(|_| {
            std::io::Error::other("the work thread ended before starting the command")
        })??;
        Ok(Work {
            pid,
            started: Instant::now(),
            finished: done_rx,
            last_stderr,
        })
    }

    /// Waits for the command to exit. Cancel-safe: call again after a `select!`.
    pub async fn wait(&mut self) -> std::io::Result<Finished> {
        let (exit, cpu_seconds) = (&mut self.finished)
            .await
            .map_err(|_| std::io::Error::other("the work thread ended without a status"))??;
        // Anything the command left running in its group is part of this item's work,
        // which is over: leave no orphans.
        signal_group(self.pid, libc::SIGKILL);
        Ok(Finished {
            exit,
            cpu_seconds,
            wall_seconds: self.started.elapsed().as_secs_f64(),
        })
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn terminate(&self) {
        signal_group(self.pid, libc::SIGTERM);
    }

    pub fn kill(&self) {
        signal_group(self.pid, libc::SIGKILL);
    }

    /// The last line the command wrote to stderr (cut short), for the error message.
    pub fn last_stderr_line(&self) -> String {
        self.last_stderr
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// CPU seconds used so far by the live process group (and what its members reaped).
    pub fn cpu_seconds_so_far(&self) -> f64 {
        group_cpu_seconds(self.pid)
    }
}

/// The arguments after which `Work::spawn` starts the guard.
const GUARD_ARGS: [&str; 3] = ["agent", "--work-guard", "--"];

/// The work command when `argv` is exactly how `Work::spawn` starts the guard.
pub fn guard_command(argv: &[String]) -> Option<&[String]> {
    let rest = argv.get(1..)?;
    let command = rest.strip_prefix(&GUARD_ARGS.map(String::from)[..])?;
    (!command.is_empty()).then_some(command)
}

/// The guard: `triad agent --work-guard -- <command…>`, the leader of the work's
/// process group. It runs the command, passes its exit status on, and kills the whole
/// group as soon as the agent that started it is gone (its parent changes), so work
/// never outlives a crashed or SIGKILLed agent. PR_SET_PDEATHSIG alone would only kill
/// the command, not what the command started.
///
/// It survives SIGTERM/SIGINT/SIGHUP, which are meant for the work (the work gets them
/// as a member of the group). It catches them with a handler that does nothing rather
/// than ignoring them: exec resets caught signals to their defaults but keeps ignored
/// ones ignored, so the command starts with its defaults without a pre-exec hook, and
/// so by posix_spawn instead of a fork that copies the guard's page tables.
pub fn run_guard(command: &[String]) -> ! {
    // SAFETY: plain libc calls on our own process.
    let parent = std::env::var(GUARD_PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        .unwrap_or_else(|| unsafe { libc::getppid() });
    extern "C" fn meant_for_the_work(_: libc::c_int) {}
    for sig in PASSED_ON {
        // SAFETY: installs a handler that touches nothing.
        unsafe {
            libc::signal(sig, meant_for_the_work as *const () as libc::sighandler_t);
        }
    }
    let Some((program, args)) = command.split_first() else {
        eprintln!("triad: no work command given to the guard");
        std::process::exit(127);
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env_remove(GUARD_PARENT_ENV);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("triad: cannot start the work command {program:?}: {e}");
            std::process::exit(127);
        }
    };
    let report_dir = std::env::var_os("TRIAD_REPORT")
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let _ = std::thread::Builder::new()
        .name("triad-guard".into())
        .spawn(move || {
            loop {
                // SAFETY: getppid and kill have no memory effects.
                if unsafe { libc::getppid() } != parent {
                    // The agent cannot clean up the attempt's report directory any more.
                    if let Some(dir) = &report_dir {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    // The agent is gone: end everything in our group, us included.
                    unsafe {
                        libc::kill(0, libc::SIGKILL);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    let mut status: libc::c_int = 0;
    let pid = child.id() as i32;
    // SAFETY: waitpid on our own child with a valid pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            std::process::exit(127);
        }
    }
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    // Die the way the command died, so the agent sees the same status.
    let sig = libc::WTERMSIG(status);
    // SAFETY: resetting a disposition and signalling ourselves.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
    }
    std::process::exit(128 + sig)
}

pub fn signal_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

fn forward_stderr(stream: std::process::ChildStderr, last: &Mutex<String>) {
    let mut reader = std::io::BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a command printing one endless line cannot grow the agent's memory.
        match Read::take(&mut reader, MAX_LINE as u64).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let _ = std::io::stderr().write_all(&line);
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if !text.is_empty()
            && let Ok(mut l) = last.lock()
        {
            *l = cut(text, 256);
        }
    }
}

fn wait4(pid: i32) -> std::io::Result<(Exit, f64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; pid is our own child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let exit = if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else {
        Exit::Signal(libc::WTERMSIG(status))
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((exit, secs(usage.ru_utime) + secs(usage.ru_stime)))
}

/// utime + stime + cutime + cstime of every live process in the group, from /proc.
pub fn group_cpu_seconds(pgid: i32) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0u64;
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some((pgrp, t)) = parse_stat(&stat)
            && pgrp == pgid
        {
            total += t;
        }
    }
    total as f64 / ticks
}

/// `(pgrp, utime + stime + cutime + cstime)` from a `/proc/<pid>/stat` line. The
/// command name may contain spaces and parentheses, so fields count from the last ')'.
pub fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) … utime(11) stime(12) cutime(13) cstime(14).
    let pgrp = f.get(2)?.parse().ok()?;
    let mut t = 0u64;
    for i in 11..=14 {
        t += f.get(i)?.parse::<i64>().ok()?.max(0) as u64;
    }
    Some((pgrp, t))
}

/// A private directory for one attempt's report file, removed when dropped.
pub struct ReportDir {
    dir: PathBuf,
    pub path: PathBuf,
}

impl ReportDir {
    pub fn create(item: &str, attempt: i32) -> std::io::Result<ReportDir> {
        Self::create_in(&std::env::temp_dir(), item, attempt)
    }

    /// The same under `base` (the runner's: the pod's shared volume, where the agent
    /// container reads it).
    pub fn create_in(base: &Path, item: &str, attempt: i32) -> std::io::Result<ReportDir> {
        let unique: u64 = rand::random();
        let safe: String = item
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = base.join(format!("triad-{safe}-{attempt}-{unique:016x}"));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("report.jsonl");
        std::fs::File::create(&path)?;
        Ok(ReportDir { dir, path })
    }
}

impl Drop for ReportDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Follows the report file: reads what was appended, splits it into lines and folds
/// them into a [`ReportState`]. Memory stays at one chunk plus one line however much
/// the command writes.
pub struct ReportTail {
    file: tokio::fs::File,
    splitter: LineSplitter,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;
/// Most bytes read per poll, so a flood cannot keep the run loop from its other duties.
const MAX_PER_POLL: usize = 16 * CHUNK;

impl ReportTail {
    pub async fn open(path: &Path) -> std::io::Result<ReportTail> {
        Ok(ReportTail {
            file: tokio::fs::File::open(path).await?,
            splitter: LineSplitter::default(),
            buf: vec![0; CHUNK],
        })
    }

    /// Reads what is there now (up to a bound) into `state`.
    pub async fn poll(&mut self, state: &mut ReportState) -> std::io::Result<()> {
        let mut read = 0;
        while read < MAX_PER_POLL {
            let n = self.file.read(&mut self.buf).await?;
            if n == 0 {
                break;
            }
            read += n;
            self.splitter.feed(&self.buf[..n], |line| fold(line, state));
        }
        Ok(())
    }

    /// The command has exited: read everything that is left, including a last line
    /// without a newline.
    pub async fn drain(&mut self, state: &mut ReportState) -> std::io::Result<()> {
        loop {
            let n = self.file.read(&mut self.buf).await?;
            if n == 0 {
                break;
            }
            self.splitter.feed(&self.buf[..n], |line| fold(line, state));
        }
        self.splitter.finish(|line| fold(line, state));
        Ok(())
    }
}

fn fold(line: Line<'_>, state: &mut ReportState) {
    match line {
        Line::TooLong => state.too_long(),
        Line::Text(bytes) => state.line(bytes),
    }
}

/// The usage written to the item: the reported counters plus the runtime's own
/// measurements, which win over anything the command claims for those names.
pub fn usage_with_measured(
    reported: &BTreeMap<String, f64>,
    wall: f64,
    cpu: f64,
) -> BTreeMap<String, f64> {
    let mut usage = reported.clone();
    // Millisecond resolution keeps the status readable and lets equal values compare equal.
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    usage.insert(crate::api::WALL_SECONDS.into(), round(wall));
    usage.insert(crate::api::CPU_SECONDS.into(), round(cpu));
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_guard_invocation_skips_the_cli() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let spawned = argv(&["triad", "agent", "--work-guard", "--", "sh", "-c", "x"]);
        assert_eq!(
            guard_command(&spawned),
            Some(&spawned[4..]),
            "the command after `--`"
        );
        for other in [
            argv(&["triad", "agent", "--work-guard", "--"]),
            argv(&["triad", "agent", "--", "true"]),
            argv(&[
                "triad",
                "agent",
                "--pool",
                "p",
                "--work-guard",
                "--",
                "true",
            ]),
            argv(&["triad"]),
        ] {
            assert_eq!(guard_command(&other), None, "{other:?}");
        }
    }

    #[test]
    fn work_input_is_the_payload_or_why_it_must_not_run() {
        assert_eq!(work_input(None).unwrap(), "{}");
        let payload = FreeForm::from(serde_json::json!({"a": [1, {"b": "c"}]}));
        assert_eq!(
            work_input(Some(&payload)).unwrap(),
            r#"{"a":[1,{"b":"c"}]}"#
        );

        let mut deep = serde_json::json!({});
        for _ in 0..149 {
            deep = serde_json::json!({"d": deep});
        }
        let refused = work_input(Some(&FreeForm::from(deep))).unwrap_err();
        assert_eq!(refused.kind, OutcomeKind::FailedPermanently);
        assert_eq!(refused.reason.as_deref(), Some("PayloadTooDeep"));
        assert_eq!(
            refused.message.as_deref(),
            Some(
                "spec.payload is nested 150 levels deep; the limit is 64: flatten it or pass it by reference (for example an object-storage URL)"
            )
        );
        // What a cached copy keeps is refused the same way.
        let mut deep = serde_json::json!([]);
        for _ in 0..69 {
            deep = serde_json::json!([deep]);
        }
        let marker = FreeForm::from(deep).into_marker();
        assert_eq!(
            work_input(marker.as_ref()).unwrap_err().reason.as_deref(),
            Some("PayloadTooDeep")
        );

        let big = FreeForm::from(serde_json::json!({"blob": "x".repeat(MAX_PAYLOAD_BYTES)}));
        assert_eq!(
            work_input(Some(&big)).unwrap_err().reason.as_deref(),
            Some("PayloadTooLarge")
        );
    }

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line =
            "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some((1234, 13)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn measured_usage_wins() {
        let reported = [
            ("tokens".to_owned(), 5.0),
            ("wallSeconds".to_owned(), 999.0),
        ]
        .into();
        let u = usage_with_measured(&reported, 1.23456, 0.5);
        assert_eq!(u["wallSeconds"], 1.235);
        assert_eq!(u["cpuSeconds"], 0.5);
        assert_eq!(u["tokens"], 5.0);
    }

    #[tokio::test]
    async fn runs_a_command_with_payload_and_reports() {
        let dir = ReportDir::create("ns/item", 1).unwrap();
        let report = dir.path.to_string_lossy().into_owned();
        let script = r#"read -r p; echo "{\"result\": $p}" >> "$TRIAD_REPORT"; echo '{"progress":{"percent":50}}' >> "$TRIAD_REPORT"; echo 'junk' >> "$TRIAD_REPORT"; echo oops >&2; exit 3"#;
        let command = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let mut work = Work::spawn(Launch {
            command: &command,
            env: vec![("TRIAD_REPORT".into(), report)],
            stdin: b"{\"a\":1}\n".to_vec(),
            guarded: false,
        })
        .unwrap();
        let done = work.wait().await.unwrap();
        assert_eq!(done.exit, Exit::Code(3));
        let mut tail = ReportTail::open(&dir.path).await.unwrap();
        let mut state = ReportState::default();
        tail.drain(&mut state).await.unwrap();
        assert_eq!(state.result, Some(serde_json::json!({"a": 1})));
        assert_eq!(state.progress.percent, Some(50));
        assert_eq!(state.take_rejected(), 1);
        // stderr is read by another thread; give it a moment.
        for _ in 0..50 {
            if work.last_stderr_line() == "oops" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(work.last_stderr_line(), "oops");
    }

    #[tokio::test]
    async fn terminating_an_attempt_leaves_no_grandchild_running() {
        // The shell starts a grandchild and says which; the test waits for that, not for
        // a fixed time, so the grandchild surely exists when the attempt is terminated.
        let dir = ReportDir::create("ns/grandchild", 1).unwrap();
        let pidfile = dir.path.with_file_name("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let command = vec!["sh".to_owned(), "-c".to_owned(), script];
        let mut work = Work::spawn(Launch {
            command: &command,
            env: vec![],
            stdin: vec![],
            guarded: false,
        })
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let grandchild: i32 = loop {
            let text = std::fs::read_to_string(&pidfile).unwrap_or_default();
            if let Ok(pid) = text.trim().parse() {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no grandchild started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let alive = |pid: i32| std::path::Path::new(&format!("/proc/{pid}")).exists();
        assert!(alive(grandchild));
        work.terminate();
        let done = tokio::time::timeout(Duration::from_secs(5), work.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.exit, Exit::Signal(libc::SIGTERM));
        // The grandchild is reaped by init once killed; give that a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(grandchild) && !is_zombie(grandchild) {
            assert!(
                std::time::Instant::now() < deadline,
                "the grandchild {grandchild} outlived its group"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn cpu_time_is_measured() {
        let command = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done".to_owned(),
        ];
        let mut work = Work::spawn(Launch {
            command: &command,
            env: vec![],
            stdin: vec![],
            guarded: false,
        })
        .unwrap();
        let done = work.wait().await.unwrap();
        assert_eq!(done.exit, Exit::Code(0));
        assert!(done.cpu_seconds > 0.0, "{done:?}");
        assert!(done.wall_seconds >= done.cpu_seconds * 0.5, "{done:?}");
    }

    #[test]
    fn spawn_failure_is_an_error() {
        let command = vec!["/nonexistent/triad-test".to_owned()];
        assert!(
            Work::spawn(Launch {
                command: &command,
                env: vec![],
                stdin: vec![],
                guarded: false,
            })
            .is_err()
        );
    }
}
