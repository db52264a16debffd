//! The binary: `check-config` lists every problem with its key path; `serve` stops cleanly
//! with exit 0 on SIGTERM after answering in-flight publishes.

mod support;

use std::process::Command;

use support::process::RouterProcess;
use support::{order_event, RedisServer, RouterApi};

const BIN: &str = env!("CARGO_BIN_EXE_evrouter");

#[test]
fn check_config_lists_every_problem_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"nowhere\"\nmax_batchh = 5\n[writer]\nlinger = \"soon\"\n[[streams]]\nname = \"order\"\npartitions = 0\ncolour = \"red\"\n",
    )
    .expect("write");
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for path in [
        "server.listen",
        "server.max_batchh",
        "writer.linger",
        "streams[0].partitions",
        "streams[0].colour",
    ] {
        assert!(stderr.contains(path), "{path} missing from:\n{stderr}");
    }

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/evrouter.example.toml");
    let output = Command::new(BIN)
        .args(["check-config", "--config", example])
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = Command::new(BIN)
        .args(["check-config"])
        .env("EVR_SERVER__MAX_BATCH", "0")
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.max_batch"));
}

#[test]
fn check_config_fails_where_serve_would_and_prints_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("auth.toml");
    // The principals example of docs/security.md, its token from the environment.
    std::fs::write(
        &path,
        "[auth]\nmode = \"token\"\n\n[[auth.principals]]\nname = \"payment-service\"\ntoken_env = \"EVR_TOKEN_PAYMENT\"\npublish = [\"payment.>\"]\n",
    )
    .expect("write");
    let check = |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(["check-config", "--config"]).arg(&path);
        command.env_remove("EVR_TOKEN_PAYMENT");
        if let Some(token) = token {
            command.env("EVR_TOKEN_PAYMENT", token);
        }
        command.output().expect("run")
    };
    let unset = check(None);
    assert!(!unset.status.success(), "an unset token_env passed");
    let stderr = String::from_utf8_lossy(&unset.stderr);
    assert!(
        stderr.contains("auth.principals[0].token_env") && stderr.contains("EVR_TOKEN_PAYMENT"),
        "{stderr}"
    );
    let set = check(Some("payment-token"));
    assert!(
        set.status.success(),
        "the documented token_env is refused: {}",
        String::from_utf8_lossy(&set.stderr)
    );

    // A PostgreSQL password in a query parameter is never printed.
    let path = dir.path().join("store.toml");
    std::fs::write(
        &path,
        "[eventstore]\nurl = \"postgres://evr@db:5432/events?password=hunter2&sslmode=bogus\"\n",
    )
    .expect("write");
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!printed.contains("hunter2"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_zero_on_sigterm() {
    let redis = RedisServer::start();
    // The flags override what the file says.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("evrouter.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:1\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n",
    )
    .expect("write");
    let mut process = RouterProcess::start(&redis, Some(&config)).await;
    assert_eq!(
        process.status_of(reqwest::Method::GET, "/healthz").await,
        200,
        "evrouter did not start"
    );
    process
        .publish_ok("order.created", &order_event(1, "o"))
        .await;
    let status = process.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(redis.all_envelopes().len(), 1);
}

/// Every subcommand `evrouter --help` lists is on the architecture page's line for
/// `main.rs` and shown in use (`evrouter <name>`) somewhere in the README or `docs/`; the
/// page lists none that does not exist.
#[test]
fn the_docs_name_every_subcommand() {
    let output = Command::new(BIN).arg("--help").output().expect("run");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    let commands: Vec<String> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .filter(|name| name != "help")
        .collect();
    assert!(commands.len() >= 7, "subcommands from --help: {commands:?}");

    let root = env!("CARGO_MANIFEST_DIR");
    let architecture =
        std::fs::read_to_string(format!("{root}/docs/architecture.md")).expect("architecture");
    let line = architecture
        .lines()
        .find(|line| line.trim_start().starts_with("main.rs"))
        .expect("the architecture page has a line for main.rs");
    let listed: Vec<&str> = line
        .split_once(':')
        .map(|(_, list)| list.split(',').map(str::trim).collect())
        .unwrap_or_default();
    assert_eq!(
        listed, commands,
        "the architecture page's subcommands, in --help order"
    );

    let mut docs = std::fs::read_to_string(format!("{root}/README.md")).expect("README");
    for entry in std::fs::read_dir(format!("{root}/docs"))
        .expect("docs")
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "md") {
            docs.push_str(&std::fs::read_to_string(entry.path()).expect("page"));
        }
    }
    for command in &commands {
        assert!(
            docs.contains(&format!("evrouter {command}")),
            "no page shows `evrouter {command}`"
        );
    }
}
