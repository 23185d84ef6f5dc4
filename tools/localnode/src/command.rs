//! From a container spec to the program and argv of a local process.
//!
//! Images are never pulled or run. A container's `command` + `args` run as a host process;
//! a container without `command` runs its image's name (the last path segment without tag or
//! digest, e.g. `ghcr.io/acme/triad:v1` → `triad`) as argv[0], standing in for the image's
//! entrypoint. `triad` (or any path ending in `/triad`) is the locally built binary, so pod
//! templates written for the real image run unchanged.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

use crate::env::expand;

/// argv of a container before `$(VAR)` expansion and program resolution.
pub fn raw_argv(container: &Container) -> Result<Vec<String>, String> {
    let mut argv = match container.command.as_deref() {
        Some(cmd) if !cmd.is_empty() => cmd.to_vec(),
        _ => {
            let image = container.image.as_deref().unwrap_or("");
            let entry = image_entrypoint(image).ok_or_else(|| {
                format!(
                    "container {:?} has no command and no usable image name",
                    container.name
                )
            })?;
            vec![entry]
        }
    };
    argv.extend(container.args.iter().flatten().cloned());
    Ok(argv)
}

/// The stand-in entrypoint of an image: its repository's last path segment.
pub fn image_entrypoint(image: &str) -> Option<String> {
    let without_digest = image.split('@').next().unwrap_or("");
    let last = without_digest.rsplit('/').next().unwrap_or("");
    let name = last.split(':').next().unwrap_or("");
    (!name.is_empty()).then(|| name.to_string())
}

/// argv with `$(VAR)` references expanded from the container's environment.
pub fn expand_argv(
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    argv.iter()
        .map(|a| expand(a, |n| env.get(n).cloned()))
        .collect()
}

pub fn is_triad(argv0: &str) -> bool {
    argv0 == "triad" || argv0.ends_with("/triad")
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The executable to run for argv[0]. `triad` maps to the locally built binary; names
/// without a slash are looked up in `path_var` (the container's PATH); relative paths are
/// relative to the pod's working directory. The error is a message for the pod's status.
pub fn resolve_program(
    argv0: &str,
    triad_bin: Option<&Path>,
    path_var: &str,
    cwd: &Path,
) -> Result<PathBuf, String> {
    if argv0.is_empty() {
        return Err("empty command".to_string());
    }
    if is_triad(argv0) {
        return match triad_bin {
            Some(bin) if is_executable(bin) => Ok(bin.to_path_buf()),
            Some(bin) => Err(format!(
                "triad binary {} does not exist or is not executable (build it with `cargo build`)",
                bin.display()
            )),
            None => Err("no triad binary: pass --triad-bin or set TRIAD_BIN".to_string()),
        };
    }
    if argv0.contains('/') {
        let path = cwd.join(argv0);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(format!("exec: {argv0:?}: no such executable file"))
        };
    }
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(argv0))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("exec: {argv0:?}: executable file not found in $PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn image_names_become_entrypoints() {
        assert_eq!(image_entrypoint("triad").as_deref(), Some("triad"));
        assert_eq!(
            image_entrypoint("ghcr.io/acme/triad:v1").as_deref(),
            Some("triad")
        );
        assert_eq!(
            image_entrypoint("localhost:5000/triad").as_deref(),
            Some("triad")
        );
        assert_eq!(
            image_entrypoint("busybox@sha256:abc").as_deref(),
            Some("busybox")
        );
        assert_eq!(image_entrypoint("r/x:1@sha256:abc").as_deref(), Some("x"));
        assert_eq!(image_entrypoint(""), None);
    }

    #[test]
    fn argv_from_command_args_or_image() {
        let c = Container {
            name: "c".into(),
            image: Some("ghcr.io/acme/triad:dev".into()),
            args: Some(vec!["agent".into(), "--".into(), "sh".into()]),
            ..Default::default()
        };
        assert_eq!(
            raw_argv(&c).unwrap_or_default(),
            ["triad", "agent", "--", "sh"]
        );
        let c = Container {
            command: Some(vec!["sh".into(), "-c".into()]),
            args: Some(vec!["echo $(X)".into()]),
            ..c
        };
        let argv = raw_argv(&c).unwrap_or_default();
        assert_eq!(argv, ["sh", "-c", "echo $(X)"]);
        let env = BTreeMap::from([("X".to_string(), "1".to_string())]);
        assert_eq!(expand_argv(&argv, &env), ["sh", "-c", "echo 1"]);
        let empty = Container {
            name: "c".into(),
            ..Default::default()
        };
        assert!(raw_argv(&empty).is_err());
    }

    #[test]
    fn programs_resolve() {
        let tmp = std::env::temp_dir().join(format!("localnode-resolve-{}", std::process::id()));
        let bin = tmp.join("bin");
        std::fs::create_dir_all(&bin).expect("temp dir");
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write tool");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let plain = bin.join("plain");
        std::fs::write(&plain, "data").expect("write plain");
        let path_var = format!("/nonexistent:{}", bin.display());

        assert_eq!(
            resolve_program("tool", None, &path_var, &tmp),
            Ok(tool.clone())
        );
        assert_eq!(
            resolve_program("triad", Some(&tool), &path_var, &tmp),
            Ok(tool.clone())
        );
        assert_eq!(
            resolve_program("/usr/bin/triad", Some(&tool), "", &tmp),
            Ok(tool.clone())
        );
        assert_eq!(
            resolve_program("bin/tool", None, "", &tmp),
            Ok(tool.clone())
        );
        assert_eq!(
            resolve_program(&tool.display().to_string(), None, "", &tmp),
            Ok(tool.clone())
        );
        assert!(resolve_program("plain", None, &path_var, &tmp).is_err());
        assert!(resolve_program("missing", None, &path_var, &tmp).is_err());
        assert!(resolve_program("triad", None, &path_var, &tmp).is_err());
        assert!(resolve_program("triad", Some(&plain), &path_var, &tmp).is_err());
        assert!(resolve_program("", None, &path_var, &tmp).is_err());
        assert!(
            is_triad("triad")
                && is_triad("/bin/triad")
                && !is_triad("triad-x")
                && !is_triad("mytriad")
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
