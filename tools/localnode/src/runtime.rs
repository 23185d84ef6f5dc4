//! Processes of a pod.
//!
//! Every pod gets a process group whose leader is a tiny "pause" process (this binary
//! re-executed as `triad-localnode __pause`), and every container process of the pod joins
//! that group. Signalling the group reaches every container and whatever they forked, and
//! the group outlives the exit or restart of any single container.
//!
//! The pause process also guarantees that no pod process outlives the runner: it blocks
//! reading a pipe whose only writer is the runner, and when the pipe closes (the runner
//! tore the pod down, exited, or was SIGKILLed) it SIGKILLs its whole group, itself included.
//! It ignores SIGTERM, so a graceful stop of the group only reaches the containers.
//!
//! `<pod dir>/pid` holds the group id while the group exists; `hack/cluster.sh down` uses it
//! as a last-resort sweep, and so does the runner at startup.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, ChildStdin, Command};

pub const PAUSE_ARG: &str = "__pause";

/// Entry point of the pause process; never returns.
pub fn pause_main() -> ! {
    // SAFETY: plain libc calls on this process's own signal dispositions and group.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // SAFETY: signals this process's own group.
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
    std::process::exit(137)
}

/// Sends a signal to a process group; a group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid addresses a process group; no memory involved.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

pub fn signal_pid(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: as above, for a single process.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

pub struct Sandbox {
    pause: Child,
    pgid: i32,
    pid_file: PathBuf,
    /// The runner's end of the pause process's lifeline; dropping it kills the group.
    lifeline: Option<ChildStdin>,
}

impl Sandbox {
    pub fn create(pod_dir: &Path) -> std::io::Result<Self> {
        // /proc/self/exe keeps working when cargo replaces the binary on disk meanwhile.
        let mut pause = Command::new("/proc/self/exe")
            .arg0("triad-localnode")
            .arg(PAUSE_ARG)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir(pod_dir)
            .spawn()?;
        let pgid = pause
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| std::io::Error::other("pause process exited at once"))?;
        let lifeline = pause.stdin.take();
        let pid_file = pod_dir.join("pid");
        let sandbox = Self {
            pause,
            pgid,
            pid_file,
            lifeline,
        };
        std::fs::write(&sandbox.pid_file, format!("{pgid}\n"))?;
        Ok(sandbox)
    }

    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.pause.try_wait(), Ok(None))
    }

    pub fn signal(&self, sig: i32) {
        signal_group(self.pgid, sig);
    }

    /// Kills everything in the group and waits for the pause process.
    pub async fn destroy(mut self) {
        self.signal(libc::SIGKILL);
        drop(self.lifeline.take());
        if let Err(e) = self.pause.wait().await {
            tracing::warn!(pgid = self.pgid, error = %e, "waiting for pause process");
        }
        // Members that were already exiting may linger a moment; one more kill is cheap.
        signal_group(self.pgid, libc::SIGKILL);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Everything needed to start one container process.
pub struct Launch<'a> {
    pub program: &'a Path,
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub cwd: &'a Path,
    pub log: &'a Path,
    pub pgid: i32,
}

pub fn spawn(launch: &Launch<'_>) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(launch.log)?;
    let log_err = log.try_clone()?;
    let mut cmd = Command::new(launch.program);
    if let Some(argv0) = launch.argv.first() {
        cmd.arg0(argv0);
    }
    cmd.args(launch.argv.iter().skip(1))
        .env_clear()
        .envs(launch.env)
        .current_dir(launch.cwd)
        .process_group(launch.pgid)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(false);
    cmd.spawn()
}

/// Kills process groups recorded by an earlier runner under `work_dir` that still exist.
/// Only groups whose leader is a pause process are touched, so a recycled pid is safe.
pub fn sweep_stale_groups(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let pid_file = entry.path().join("pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            continue;
        };
        if let Ok(pgid) = text.trim().parse::<i32>() {
            let cmdline = std::fs::read(format!("/proc/{pgid}/cmdline")).unwrap_or_default();
            let is_pause = cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == PAUSE_ARG.as_bytes());
            if is_pause {
                tracing::info!(pgid, dir = %entry.path().display(), "killing process group left by an earlier runner");
                signal_group(pgid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(&pid_file);
    }
}
