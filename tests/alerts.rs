//! The shipped Prometheus files are valid and the alerts fire as the platform's thresholds
//! say: `promtool check config`, `promtool check rules` and `promtool test rules` (the unit
//! tests in `deploy/prometheus/alerts_test.yml`) from Debian's `prometheus` package.

use std::process::Command;

fn promtool(args: &[&str]) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian's prometheus package) is installed");
    assert!(
        output.status.success(),
        "promtool {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_alert_rules_are_valid_and_fire_at_the_platforms_thresholds() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

#[test]
fn the_example_scrape_config_is_valid() {
    promtool(&["check", "config", "prometheus.yml"]);
}
