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

/// Every query of the Grafana dashboard is valid PromQL: each is checked by promtool as a
/// recording rule.
#[test]
fn the_grafana_dashboards_queries_are_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/evrouter.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("json");
    let mut rules = String::from("groups:\n  - name: grafana\n    rules:\n");
    let mut n = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            n += 1;
            rules.push_str(&format!(
                "      - record: grafana:query_{n}\n        expr: {}\n",
                serde_json::to_string(expr).expect("quoted")
            ));
        }
    }
    assert!(n >= 18, "{n} queries");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("grafana.yml");
    std::fs::write(&file, rules).expect("rules");
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_example_scrape_config_is_valid() {
    promtool(&["check", "config", "prometheus.yml"]);
}
