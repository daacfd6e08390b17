//! Finding (and building) the binaries under test.
//!
//! The benchmark measures the real `multinic-controller` and
//! `multinic-agent` binaries, built in the same profile as itself (release
//! for the numbers in the README). Cargo does not build other packages'
//! binaries for a dependent, so the benchmark asks cargo to, and takes the
//! paths cargo reports. It never builds anything but those two binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::BenchError;

/// Builds both binaries with cargo (release unless `debug`) and returns
/// (controller, agent).
pub fn build(debug: bool) -> Result<(PathBuf, PathBuf), BenchError> {
    let [controller, agent] = build_bins(debug, ["multinic-controller", "multinic-agent"])?;
    Ok((controller, agent))
}

/// Builds the binaries of these packages (each names its binary) with cargo
/// (release unless `debug`) and returns their paths, in the same order.
pub fn build_bins<const N: usize>(debug: bool, packages: [&str; N]) -> Result<[PathBuf; N], BenchError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace).args(["build", "--bins"]);
    for package in packages {
        cmd.args(["-p", package]);
    }
    cmd.arg("--message-format=json-render-diagnostics").stdout(Stdio::piped()).stderr(Stdio::inherit());
    if !debug {
        cmd.arg("--release");
    }
    let out = cmd.output().map_err(|e| BenchError::Setup(format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!("cargo build failed ({})", out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::with_capacity(N);
    for name in packages {
        found.push(executable(&text, name).ok_or_else(|| BenchError::Setup(format!("cargo built no {name}")))?);
    }
    found.try_into().map_err(|_| BenchError::Setup("cargo reported fewer binaries than asked for".into()))
}

/// The `executable` cargo reported for binary `name`.
fn executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|m| {
        let is_bin = m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"));
        (m["reason"] == "compiler-artifact" && m["target"]["name"] == name && is_bin)
            .then(|| m["executable"].as_str().map(PathBuf::from))
            .flatten()
    })
}

/// Both binaries in `dir` (e.g. `target/debug`), if they are there.
pub fn in_dir(dir: &Path) -> Result<(PathBuf, PathBuf), BenchError> {
    let found = |name: &str| {
        let path = dir.join(name);
        path.is_file()
            .then_some(path)
            .ok_or_else(|| BenchError::Setup(format!("{name} is not in {} (build the workspace first)", dir.display())))
    };
    Ok((found("multinic-controller")?, found("multinic-agent")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_executables_in_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"multinic-controller","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"multinic-controller","kind":["bin"]},"executable":"/t/release/multinic-controller"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(executable(messages, "multinic-controller"), Some(PathBuf::from("/t/release/multinic-controller")));
        assert_eq!(executable(messages, "multinic-agent"), None);
    }
}
