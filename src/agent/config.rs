//! The agent's configuration: what the pool controller injects as env (and the same as
//! flags), parsed and checked once at start so a bad pod template fails loudly before
//! the agent claims anything.

use std::net::SocketAddr;
use std::time::Duration;

use crate::api::{EmptyQueuePolicy, LifecycleType};

/// One of the pool's queues and its weight in the agent's weighted pick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueWeight {
    pub name: String,
    pub weight: i32,
}

/// Everything the run loop needs, already validated.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The agent's name: its pod's name.
    pub name: String,
    pub namespace: String,
    /// The pod's UID; with it the agent's Lease is owned by the pod (garbage collected with it).
    pub pod_uid: Option<String>,
    pub pool: Option<String>,
    pub queues: Vec<QueueWeight>,
    pub lease_duration: Duration,
    pub lifecycle: LifecycleType,
    /// Mortal agents exit after this many items.
    pub max_items: Option<u32>,
    pub empty_queue_policy: EmptyQueuePolicy,
    pub drain: Duration,
    pub metrics_addr: SocketAddr,
    /// How many of the best candidates a claim chooses among.
    pub top_k: usize,
    /// Share of recent claims lost above which candidates are read before a claim.
    pub precheck_above: f64,
    /// With `EmptyQueuePolicy::Exit`: how long the queues must stay empty before exiting.
    pub idle_exit: Duration,
    /// Least time between two progress/usage writes for one item.
    pub progress_interval: Duration,
    /// Run the work under the guard process (`triad agent --work-guard`), so it never
    /// outlives the agent. Off only where this binary is not `triad` (unit tests).
    pub guard_work: bool,
    /// The work command and its arguments (when the work runs in this process).
    pub command: Vec<String>,
    /// The work container's runner socket: in agent pods the work runs there, and this
    /// process never starts it.
    pub runner_socket: Option<std::path::PathBuf>,
}

/// Parses `TRIAD_QUEUES`: `name[:weight]` separated by commas, e.g. `feature:3,bug:1`.
/// A queue named twice is an error rather than a silent merge: it is a template bug.
pub fn parse_queues(spec: &str) -> Result<Vec<QueueWeight>, String> {
    let mut out: Vec<QueueWeight> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once(':') {
            Some((n, w)) => {
                let w: i32 = w
                    .trim()
                    .parse()
                    .map_err(|_| format!("queue {n:?}: weight {w:?} is not an integer"))?;
                (n.trim(), w)
            }
            None => (part, 1),
        };
        if name.is_empty() || name.len() > 63 {
            return Err(format!("queue name {name:?} must be 1 to 63 characters"));
        }
        if !(1..=100).contains(&weight) {
            return Err(format!(
                "queue {name:?}: weight {weight} must be between 1 and 100"
            ));
        }
        if out.iter().any(|q| q.name == name) {
            return Err(format!("queue {name:?} is listed twice"));
        }
        out.push(QueueWeight {
            name: name.to_owned(),
            weight,
        });
    }
    if out.is_empty() {
        return Err("no queues: set TRIAD_QUEUES, e.g. \"feature:3,bug:1\"".into());
    }
    Ok(out)
}

pub fn parse_lifecycle(s: &str) -> Result<LifecycleType, String> {
    match s.trim() {
        "Persistent" | "persistent" | "" => Ok(LifecycleType::Persistent),
        "Mortal" | "mortal" => Ok(LifecycleType::Mortal),
        other => Err(format!("lifecycle {other:?}: choose Persistent or Mortal")),
    }
}

pub fn parse_empty_queue_policy(s: &str) -> Result<EmptyQueuePolicy, String> {
    match s.trim() {
        "Wait" | "wait" | "" => Ok(EmptyQueuePolicy::Wait),
        "Exit" | "exit" => Ok(EmptyQueuePolicy::Exit),
        "ScaleDown" | "scaledown" | "scale-down" => Ok(EmptyQueuePolicy::ScaleDown),
        other => Err(format!(
            "empty-queue policy {other:?}: choose Wait, Exit or ScaleDown"
        )),
    }
}

/// The metrics address. The pool controller writes `$(POD_IP):9090`, which the kubelet
/// expands; a runner that does not expand it still works because the reference is
/// resolved here. Without any setting the agent binds the pod IP, never 0.0.0.0: under
/// the local node runner all pods share one network namespace.
pub fn metrics_addr(configured: Option<&str>, pod_ip: Option<&str>) -> Result<SocketAddr, String> {
    let ip = pod_ip.filter(|s| !s.is_empty());
    let raw = match configured.filter(|s| !s.is_empty()) {
        Some(c) if c.contains("$(POD_IP)") => {
            let ip = ip.ok_or_else(|| {
                format!("metrics address {c:?} refers to POD_IP, which is not set")
            })?;
            c.replace("$(POD_IP)", ip)
        }
        Some(c) => c.to_owned(),
        None => format!("{}:9090", ip.unwrap_or("0.0.0.0")),
    };
    raw.parse()
        .map_err(|e| format!("metrics address {raw:?}: {e}"))
}

/// `triad` as the work command means this very binary (for `triad simulate` and other
/// built-in helpers) when no other `triad` is on PATH: true in the distroless image and
/// under the local node runner alike.
pub fn resolve_self(command: &mut [String]) {
    if let Some(program) = command.first_mut()
        && program == "triad"
        && check_command(std::slice::from_ref(program)).is_err()
        && let Ok(exe) = std::env::current_exe()
    {
        *program = exe.to_string_lossy().into_owned();
    }
}

/// Fails early when the work command cannot be found, so a bad template shows as a
/// crash-looping pod instead of burning every item's attempts.
pub fn check_command(command: &[String]) -> Result<(), String> {
    let Some(program) = command.first() else {
        return Err("no work command: run `triad agent -- <command> [args…]`".into());
    };
    if program.contains('/') {
        return if is_executable(std::path::Path::new(program)) {
            Ok(())
        } else {
            Err(format!(
                "work command {program:?} is not an executable file"
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program))) {
        Ok(())
    } else {
        Err(format!("work command {program:?} is not on PATH"))
    }
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_with_and_without_weights() {
        assert_eq!(
            parse_queues("feature:3, bug:1,docs").unwrap(),
            vec![
                QueueWeight {
                    name: "feature".into(),
                    weight: 3
                },
                QueueWeight {
                    name: "bug".into(),
                    weight: 1
                },
                QueueWeight {
                    name: "docs".into(),
                    weight: 1
                },
            ]
        );
    }

    #[test]
    fn bad_queue_lists_are_refused_with_a_reason() {
        assert!(parse_queues("").unwrap_err().contains("TRIAD_QUEUES"));
        assert!(parse_queues("a:x").unwrap_err().contains("not an integer"));
        assert!(
            parse_queues("a:0")
                .unwrap_err()
                .contains("between 1 and 100")
        );
        assert!(parse_queues("a,a:2").unwrap_err().contains("twice"));
        assert!(parse_queues(":3").is_err());
    }

    #[test]
    fn lifecycle_and_policy() {
        assert_eq!(parse_lifecycle("Mortal").unwrap(), LifecycleType::Mortal);
        assert_eq!(
            parse_lifecycle("Persistent").unwrap(),
            LifecycleType::Persistent
        );
        assert!(parse_lifecycle("Zombie").is_err());
        assert_eq!(
            parse_empty_queue_policy("Exit").unwrap(),
            EmptyQueuePolicy::Exit
        );
        assert_eq!(
            parse_empty_queue_policy("ScaleDown").unwrap(),
            EmptyQueuePolicy::ScaleDown
        );
        assert!(parse_empty_queue_policy("Never").is_err());
    }

    #[test]
    fn metrics_address_binds_the_pod_ip() {
        assert_eq!(
            metrics_addr(None, Some("127.0.3.4")).unwrap().to_string(),
            "127.0.3.4:9090"
        );
        assert_eq!(
            metrics_addr(Some("$(POD_IP):9191"), Some("127.0.3.4"))
                .unwrap()
                .to_string(),
            "127.0.3.4:9191"
        );
        assert_eq!(
            metrics_addr(Some("127.0.0.1:0"), None).unwrap().to_string(),
            "127.0.0.1:0"
        );
        assert_eq!(
            metrics_addr(None, None).unwrap().to_string(),
            "0.0.0.0:9090"
        );
        assert!(metrics_addr(Some("$(POD_IP):9090"), None).is_err());
        assert!(metrics_addr(Some("nonsense"), None).is_err());
    }

    #[test]
    fn command_lookup() {
        assert!(check_command(&["sh".into()]).is_ok());
        assert!(check_command(&["/bin/sh".into()]).is_ok());
        assert!(check_command(&["definitely-not-a-command-xyz".into()]).is_err());
        assert!(check_command(&["/etc/hostname-nope".into()]).is_err());
        assert!(check_command(&[]).is_err());
    }
}
