//! Startup, readiness and liveness probes of one container run, checked the kubelet's way
//! (initial delay, period, timeout, success/failure thresholds) against the pod's own
//! loopback IP. `httpGet` (HTTPS only checks that the port accepts a connection),
//! `tcpSocket` and `exec` are supported; a `grpc` probe counts as passing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::command;

/// The probes whose failure restarts a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Liveness,
}

#[derive(Debug)]
pub enum ProbeMsg {
    /// The startup probe passed (or there is none): liveness and readiness begin.
    Started,
    Ready(bool),
    /// A startup or liveness probe reached its failure threshold: restart the container.
    Failed {
        kind: ProbeKind,
        message: String,
    },
}

/// Where and how to run checks for one container run.
#[derive(Clone)]
pub struct Target {
    pub container: Container,
    pub pod_ip: String,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub pgid: i32,
    pub triad_bin: Option<PathBuf>,
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
}

fn threshold(v: Option<i32>) -> u32 {
    u32::try_from(v.unwrap_or(1).max(1)).unwrap_or(1)
}

fn resolve_port(target: &Target, port: &IntOrString) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => target
                .container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("no container port named {name:?}"))?,
        },
    };
    u16::try_from(number).map_err(|_| format!("invalid port {number}"))
}

/// Parses the status code from an HTTP/1.x status line.
pub fn status_code(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    https: bool,
) -> Result<(), String> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    if https {
        // No TLS client here; the kubelet does not verify probe certificates either, so an
        // accepted connection is the closest local equivalent.
        return Ok(());
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/localnode\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("writing request: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading response: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let code = status_code(&String::from_utf8_lossy(&head)).ok_or("malformed HTTP response")?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn exec(target: &Target, argv: &[String]) -> Result<(), String> {
    let argv = command::expand_argv(argv, &target.env);
    let argv0 = argv.first().ok_or("exec probe has no command")?;
    let path_var = target.env.get("PATH").cloned().unwrap_or_default();
    let program =
        command::resolve_program(argv0, target.triad_bin.as_deref(), &path_var, &target.cwd)?;
    let status = tokio::process::Command::new(program)
        .args(argv.iter().skip(1))
        .env_clear()
        .envs(&target.env)
        .current_dir(&target.cwd)
        .process_group(target.pgid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // A probe that times out is dropped, and with it the process.
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("running exec probe: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("exec probe exited with {status}"))
    }
}

async fn check(target: &Target, probe: &Probe) -> Result<(), String> {
    let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let attempt = async {
        if let Some(h) = &probe.http_get {
            let host = h.host.clone().unwrap_or_else(|| target.pod_ip.clone());
            let port = resolve_port(target, &h.port)?;
            let headers: Vec<(String, String)> = h
                .http_headers
                .iter()
                .flatten()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect();
            let https = h
                .scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
            http_get(
                &host,
                port,
                h.path.as_deref().unwrap_or("/"),
                &headers,
                https,
            )
            .await
        } else if let Some(t) = &probe.tcp_socket {
            let host = t.host.clone().unwrap_or_else(|| target.pod_ip.clone());
            let port = resolve_port(target, &t.port)?;
            TcpStream::connect((host.as_str(), port))
                .await
                .map(drop)
                .map_err(|e| format!("connecting to {host}:{port}: {e}"))
        } else if let Some(e) = &probe.exec {
            exec(target, e.command.as_deref().unwrap_or_default()).await
        } else {
            Ok(())
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("probe timed out after {}s", timeout.as_secs())))
}

async fn startup(target: &Target, probe: &Probe) -> Result<(), String> {
    tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let limit = threshold(probe.failure_threshold.or(Some(3)));
    let mut failures = 0;
    loop {
        match check(target, probe).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                failures += 1;
                if failures >= limit {
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

async fn readiness(target: &Target, probe: &Probe, report: &(dyn Fn(ProbeMsg) -> bool + Sync)) {
    tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let (need_ok, need_fail) = (
        threshold(probe.success_threshold),
        threshold(probe.failure_threshold.or(Some(3))),
    );
    let (mut oks, mut fails, mut ready) = (0, 0, false);
    loop {
        match check(target, probe).await {
            Ok(()) => {
                (oks, fails) = (oks + 1, 0);
                if !ready && oks >= need_ok {
                    ready = true;
                    if !report(ProbeMsg::Ready(true)) {
                        return;
                    }
                }
            }
            Err(e) => {
                (oks, fails) = (0, fails + 1);
                if ready && fails >= need_fail {
                    ready = false;
                    tracing::info!(container = %target.container.name, error = %e, "readiness probe failed");
                    if !report(ProbeMsg::Ready(false)) {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

async fn liveness(target: &Target, probe: &Probe) -> String {
    tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let limit = threshold(probe.failure_threshold.or(Some(3)));
    let mut fails = 0;
    loop {
        match check(target, probe).await {
            Ok(()) => fails = 0,
            Err(e) => {
                fails += 1;
                if fails >= limit {
                    return e;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Runs the container's probes until the run ends (the task is aborted) or a probe gives up.
/// `report` returns false once nobody listens any more.
pub async fn run(target: Target, report: impl Fn(ProbeMsg) -> bool + Sync) {
    let c = target.container.clone();
    if let Some(p) = &c.startup_probe
        && let Err(message) = startup(&target, p).await
    {
        report(ProbeMsg::Failed {
            kind: ProbeKind::Startup,
            message,
        });
        return;
    }
    if !report(ProbeMsg::Started) {
        return;
    }
    let ready = async {
        match &c.readiness_probe {
            Some(p) => readiness(&target, p, &report).await,
            None => {
                report(ProbeMsg::Ready(true));
            }
        }
    };
    let live = async {
        match &c.liveness_probe {
            Some(p) => {
                let message = liveness(&target, p).await;
                report(ProbeMsg::Failed {
                    kind: ProbeKind::Liveness,
                    message,
                });
            }
            None => std::future::pending::<()>().await,
        }
    };
    // A liveness failure ends the run; readiness alone runs forever.
    tokio::select! {
        () = live => {}
        () = async { ready.await; std::future::pending::<()>().await } => {}
    }
}

/// Whether a container needs a probe task at all.
pub fn has_probes(c: &Container) -> bool {
    c.startup_probe.is_some() || c.readiness_probe.is_some() || c.liveness_probe.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code("HTTP/1.0 503 Service Unavailable\r\nx: y"),
            Some(503)
        );
        assert_eq!(status_code("garbage"), None);
        assert_eq!(status_code(""), None);
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if req.starts_with("GET /ok ") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        assert_eq!(http_get("127.0.0.1", port, "/ok", &[], false).await, Ok(()));
        assert!(
            http_get("127.0.0.1", port, "/bad", &[], false)
                .await
                .is_err()
        );
        let target = Target {
            container: Container {
                name: "c".into(),
                ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                    container_port: i32::from(port),
                    name: Some("http".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            pod_ip: "127.0.0.1".into(),
            env: BTreeMap::new(),
            cwd: std::env::temp_dir(),
            pgid: 0,
            triad_bin: None,
        };
        let tcp = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                host: None,
                port: IntOrString::String("http".into()),
            }),
            ..Default::default()
        };
        assert_eq!(check(&target, &tcp).await, Ok(()));
        assert_eq!(resolve_port(&target, &IntOrString::Int(8080)), Ok(8080));
        assert!(resolve_port(&target, &IntOrString::String("nope".into())).is_err());
    }
}
