//! The real Dapr Python SDK of `tests/dapr-py` (pinned in its requirements), in a venv
//! made and filled when missing.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

/// The folder of the Python SDK's scripts.
pub fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dapr-py")
}

/// The venv's Python, made and filled from the pinned requirements when missing.
pub async fn python() -> PathBuf {
    let dir = sdk_dir();
    let python = dir.join(".venv/bin/python");
    if python.exists() {
        return python;
    }
    let made = tokio::process::Command::new("python3")
        .args(["-m", "venv", ".venv"])
        .current_dir(&dir)
        .status()
        .await
        .expect("python3 must be installed to run the Dapr Python SDK test");
    assert!(
        made.success(),
        "python3 -m venv failed in {}",
        dir.display()
    );
    let installed = tokio::process::Command::new(dir.join(".venv/bin/pip"))
        .args(["install", "--quiet", "-r", "requirements.txt"])
        .current_dir(&dir)
        .status()
        .await
        .expect("pip");
    assert!(
        installed.success(),
        "pip install failed in {}",
        dir.display()
    );
    python
}

/// Starts `app.py` (the `dapr-ext-grpc` app) on `port`, writing what it gets to `results`;
/// with `health_file`, its health check answers OK while that file exists. Killed when
/// dropped.
pub async fn start_app(
    port: u16,
    results: &Path,
    health_file: Option<&Path>,
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(python().await);
    command
        .arg("app.py")
        .current_dir(sdk_dir())
        .env("APP_PORT", port.to_string())
        .env("RESULTS", results)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(file) = health_file {
        // Each failed health check prints its exception.
        command.env("HEALTH_FILE", file).stderr(Stdio::null());
    }
    command.spawn().expect("the app")
}

/// What the app last wrote to its results file (null before it wrote any).
pub fn results(path: &Path) -> Value {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}
