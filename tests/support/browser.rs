//! A real browser for the pages' tests: headless Chromium (Debian's `chromium`).

/// Runs headless Chromium on `url` with `args`, letting the page's scripts run for about
/// three seconds; its standard output.
pub async fn chromium(url: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=3000",
        ])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("chromium (Debian's chromium package) is installed");
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
