//! The README's quick start, run as a newcomer would paste it: against a real evrouter (the
//! binary, serving `evrouter.example.toml` over a private Redis) and a real `evrouter tail`,
//! every command's answer compared with the `# → ` lines the README shows under it (`…`
//! stands for any text), and what the subscriber printed with the lines shown under
//! `evrouter tail`. The README cannot drift from what evrouter answers. Its log, written to
//! a file, carries no colour codes.

mod support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_evrouter");

/// One command of the quick start and the lines shown under it.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

/// The commands of the README's `## Quick start` section, continuation lines joined.
fn quick_start() -> Vec<Step> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("\n## Quick start")
        .expect("a Quick start section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let mut steps: Vec<Step> = Vec::new();
    let mut in_code = false;
    let mut pending = String::new();
    for line in section.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        if let Some(answer) = line.strip_prefix("# → ") {
            steps
                .last_mut()
                .expect("an answer follows a command")
                .expected
                .push(answer.to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                steps.push(Step {
                    command: std::mem::take(&mut pending),
                    expected: Vec::new(),
                });
            }
        }
    }
    steps
}

/// Whether `actual` is `pattern`, where `…` in the pattern stands for any text.
fn matches(pattern: &str, actual: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let mut rest = actual;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(after) = rest.strip_prefix(part) else {
                return false;
            };
            rest = after;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    rest.is_empty()
}

/// A child process whose output is kept in a file, killed on drop.
struct Running {
    child: Child,
    output: tempfile::NamedTempFile,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let output = tempfile::NamedTempFile::new().expect("temp file");
        let child = Command::new(BIN)
            .args(args)
            // Its own port for the Dapr gRPC API too.
            .env(
                "EVR_DAPR__GRPC_LISTEN",
                format!("\"127.0.0.1:{}\"", free_port()),
            )
            .stdout(output.reopen().expect("stdout"))
            .stderr(output.reopen().expect("stderr"))
            .spawn()
            .expect("spawn evrouter");
        Self { child, output }
    }

    fn output(&self) -> String {
        let mut text = String::new();
        let _ = self
            .output
            .reopen()
            .and_then(|mut f| f.read_to_string(&mut text));
        text
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- output of {:?}:\n{}", self.child.id(), self.output());
        }
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn the_readme_quick_start_answers_as_shown() {
    let steps = quick_start();
    assert!(
        steps.iter().any(|s| s.command.starts_with("scripts/serve")),
        "the quick start starts evrouter with scripts/serve"
    );
    let tail_step = steps
        .iter()
        .find(|s| s.command.starts_with("evrouter tail"))
        .expect("the quick start runs evrouter tail");
    assert!(!tail_step.expected.is_empty(), "it shows what tail prints");
    assert!(
        steps
            .iter()
            .filter(|s| s.command.starts_with("curl"))
            .count()
            >= 4,
        "{steps:#?}"
    );

    // What `scripts/serve` does, on ports of this test's own.
    let redis = RedisServer::start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/evrouter.example.toml");
    let router = Running::start(&[
        "serve",
        "--config",
        example,
        "--listen",
        &listen,
        "--redis",
        &redis.url(),
    ]);
    wait_for_port(port);
    let tail_port = free_port();
    let local = |command: &str| {
        command
            .replace("127.0.0.1:3500", &listen)
            .replace("localhost:3500", &listen)
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{tail_port}"))
    };
    let tail_command = local(&tail_step.command);
    let tail_args: Vec<&str> = tail_command
        .strip_prefix("evrouter ")
        .expect("evrouter tail …")
        .split_whitespace()
        .collect();
    let tail = Running::start(&tail_args);
    wait_for_port(tail_port);

    let runs = |s: &&Step| {
        s.command.starts_with("curl")
            || (s.command.starts_with("evrouter ") && !s.command.starts_with("evrouter tail"))
    };
    for step in steps.iter().filter(runs) {
        let command = local(&step.command);
        let command = match command.strip_prefix("evrouter ") {
            Some(rest) => format!("{BIN} {rest}"),
            None => command,
        };
        let output = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .expect("sh");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            step.expected.len(),
            "`{}` printed {} lines, the README shows {}:\n{stdout}\nrouter log:\n{}",
            step.command,
            lines.len(),
            step.expected.len(),
            router.output()
        );
        for (line, expected) in lines.iter().zip(&step.expected) {
            assert!(
                matches(expected, line),
                "`{}` answered\n  {line}\nthe README shows\n  {expected}",
                step.command
            );
        }
    }

    // Logs written to a file carry no colour codes (colour is for a terminal only).
    let log = router.output();
    assert!(log.contains("evrouter serving"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );

    // The subscriber printed what the README shows, in any order across keys.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let printed = tail.output();
        let missing: Vec<&String> = tail_step
            .expected
            .iter()
            .filter(|e| !printed.lines().any(|l| matches(e, l)))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "evrouter tail did not print {missing:?}; it printed:\n{printed}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_pattern_matcher_reads_ellipses() {
    assert!(matches("{\"id\":\"…\"}", "{\"id\":\"17-0\"}"));
    assert!(matches("a…b…c", "a12b34c"));
    assert!(!matches("a…b", "a12c"));
    assert!(matches("exact", "exact"));
    assert!(!matches("exact", "exactly"));
}
