//! The agent's side of the runner protocol ([`crate::runner::protocol`]): the link to
//! the work container's runner, and a started item seen through it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::work::Finished;
use crate::runner::protocol::{self, FromRunner, Hello, StartItem, StopSignal, ToRunner};

/// How long the runner has to greet a new connection.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected runner. Messages are read and written by two small tasks, so sending
/// a signal never waits and receiving is cancel-safe.
pub struct RunnerLink {
    pub hello: Hello,
    to_runner: mpsc::UnboundedSender<ToRunner>,
    from_runner: mpsc::UnboundedReceiver<FromRunner>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for RunnerLink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why an item could not be started through the runner.
pub enum StartError {
    /// The runner answered: the command could not start (the link is still good).
    Refused(RunnerLink, String),
    /// The connection is gone.
    Lost,
}

impl RunnerLink {
    /// Connects and reads the runner's greeting.
    pub async fn connect(path: &Path) -> std::io::Result<RunnerLink> {
        let stream = UnixStream::connect(path).await?;
        let (read, mut write) = stream.into_split();
        let mut reader = protocol::Reader::new(read);
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, reader.next::<FromRunner>()).await {
            Ok(Ok(Some(FromRunner::Hello(h)))) => h,
            Ok(Ok(other)) => {
                return Err(std::io::Error::other(format!(
                    "the runner did not greet: {other:?}"
                )));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("the runner did not greet in time")),
        };
        let (in_tx, from_runner) = mpsc::unbounded_channel();
        let reading = tokio::spawn(async move {
            while let Ok(Some(m)) = reader.next::<FromRunner>().await {
                if in_tx.send(m).is_err() {
                    return;
                }
            }
        });
        let (to_runner, mut out_rx) = mpsc::unbounded_channel::<ToRunner>();
        let writing = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if write.write_all(&protocol::encode(&m)).await.is_err() {
                    return;
                }
            }
        });
        Ok(RunnerLink {
            hello,
            to_runner,
            from_runner,
            tasks: [reading, writing],
        })
    }

    /// Connects, retrying until `stop` resolves. Returns `None` if it did first.
    pub async fn connect_until(
        path: &Path,
        stop: impl std::future::Future<Output = ()>,
    ) -> Option<RunnerLink> {
        tokio::pin!(stop);
        let mut warned = false;
        let mut delay = Duration::from_millis(50);
        loop {
            match RunnerLink::connect(path).await {
                Ok(link) => {
                    tracing::info!(mode = ?link.hello.mode, version = %link.hello.version, "connected to the work container's runner");
                    return Some(link);
                }
                Err(e) => {
                    if !warned && delay >= Duration::from_secs(1) {
                        tracing::info!(socket = %path.display(), error = %e, "waiting for the work container's runner");
                        warned = true;
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Whether the runner is still there (nothing has told us otherwise).
    pub fn is_open(&self) -> bool {
        !self.to_runner.is_closed() && !self.tasks[0].is_finished()
    }

    /// Tells the runner to exit (the agent is exiting for good), and waits until the
    /// message is written.
    pub async fn shutdown(mut self) {
        let _ = self.to_runner.send(ToRunner::Shutdown {});
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.to_runner, tx));
        let writing = &mut self.tasks[1];
        let _ = tokio::time::timeout(Duration::from_secs(2), writing).await;
    }

    /// Starts an item and waits for the runner's answer.
    pub async fn start(mut self, item: StartItem) -> Result<RemoteWork, StartError> {
        if self.to_runner.send(ToRunner::Start(item)).is_err() {
            return Err(StartError::Lost);
        }
        loop {
            match self.from_runner.recv().await {
                Some(FromRunner::Started { pid, report }) => {
                    return Ok(RemoteWork {
                        link: self,
                        pid,
                        report,
                        started: Instant::now(),
                        cpu_seconds: 0.0,
                        last_stderr: String::new(),
                    });
                }
                Some(FromRunner::StartFailed { error }) => {
                    return Err(StartError::Refused(self, error));
                }
                // Leftovers of an earlier item.
                Some(_) => {}
                None => return Err(StartError::Lost),
            }
        }
    }
}

/// An item running in the work container.
pub struct RemoteWork {
    link: RunnerLink,
    /// The work's pid in the work container's namespace (for logs only).
    pub pid: i32,
    /// The report file, in the shared volume.
    pub report: PathBuf,
    started: Instant,
    cpu_seconds: f64,
    last_stderr: String,
}

/// The runner went away while the item ran: the work container exited (it may have
/// been OOM-killed) or restarted.
#[derive(Debug)]
pub struct LinkLost;

impl RemoteWork {
    /// Waits for the work to end. Cancel-safe: call again after a `select!`.
    pub async fn wait(&mut self) -> Result<Finished, LinkLost> {
        loop {
            match self.link.from_runner.recv().await {
                Some(FromRunner::Usage { cpu_seconds }) => self.cpu_seconds = cpu_seconds,
                Some(FromRunner::Exited(e)) => {
                    self.cpu_seconds = e.cpu_seconds;
                    self.last_stderr = e.last_stderr;
                    return Ok(Finished {
                        exit: e.exit,
                        cpu_seconds: e.cpu_seconds,
                        wall_seconds: e.wall_seconds,
                    });
                }
                Some(_) => {}
                None => return Err(LinkLost),
            }
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn terminate(&self) {
        let _ = self.link.to_runner.send(ToRunner::Signal(StopSignal::Term));
    }

    pub fn kill(&self) {
        let _ = self.link.to_runner.send(ToRunner::Signal(StopSignal::Kill));
    }

    pub fn cpu_seconds_so_far(&self) -> f64 {
        self.cpu_seconds
    }

    pub fn last_stderr_line(&self) -> String {
        self.last_stderr.clone()
    }

    /// The report has been read: the runner may remove it. Gives the link back.
    pub fn finish(self) -> RunnerLink {
        let _ = self.link.to_runner.send(ToRunner::Done {});
        self.link
    }
}
