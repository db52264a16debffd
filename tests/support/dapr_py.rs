//! The real Dapr Python SDK of `tests/dapr-py` (pinned in its requirements), in a venv
//! made and filled when missing.

use std::path::PathBuf;

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
