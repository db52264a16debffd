//! The `evrouter` command line: parse arguments, load the config, and run.

mod replay_cli;
mod restore_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use evrouter::config::{Config, ConfigError};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// evrouter: validated events over HTTP into Redis Streams, delivered in order per key.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve {
        /// Config file (TOML); without one the defaults serve.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address; overrides `server.listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Redis URL; overrides `redis.url`.
        #[arg(long)]
        redis: Option<String>,
    },
    /// Check a config file and list every problem with its key path.
    CheckConfig {
        /// Config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// A tiny webhook subscriber: prints the body of every request it gets, one a line,
    /// and answers 200 (for trying evrouter out).
    Tail {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Stop after this many requests.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Dead letters of a subscription, through a running evrouter's API.
    Dlq {
        /// What to do.
        #[arg(value_enum)]
        action: DlqAction,
        /// The subscription.
        #[arg(long)]
        subscription: String,
        /// evrouter's base URL.
        #[arg(long, default_value = "http://127.0.0.1:3500")]
        router: String,
        /// Most entries to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Bearer token, when evrouter requires one.
        #[arg(long, env = "EVR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Write archived events back into Redis after it lost its data (with their ids, in
    /// order), so that subscriptions can be rewound over them.
    Restore {
        /// Config file (TOML): Redis and `[eventstore]`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Stored at or after this time (RFC 3339).
        #[arg(long)]
        from: String,
        /// Stored before this time (RFC 3339).
        #[arg(long)]
        to: String,
        /// Only these topics (comma-separated).
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        /// Events read as one time slice (cut at whole seconds); three slices are read at
        /// once, each on a connection of its own. Lower it to use less memory.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
        slice_events: u64,
    },
    /// Replay archived events from the event store into a subscription, or publish them
    /// again to a topic, with a progress bar (Ctrl-C cancels the replay).
    Replay(ReplayArgs),
    /// The audit log of a running evrouter (admin): changes to subscriptions, DLQs and Dapr
    /// apps, and refused requests.
    Audit {
        /// From this time (RFC 3339) or ms since the epoch.
        #[arg(long)]
        since: Option<String>,
        /// Only this principal's entries.
        #[arg(long)]
        principal: Option<String>,
        /// Most entries to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// evrouter's base URL.
        #[arg(long, default_value = "http://127.0.0.1:3500")]
        router: String,
        /// Bearer token of an admin.
        #[arg(long, env = "EVR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// Arguments of `evrouter replay`.
#[derive(clap::Args)]
struct ReplayArgs {
    /// Stored at or after this time (RFC 3339).
    #[arg(long)]
    from: String,
    /// Stored before this time (RFC 3339).
    #[arg(long)]
    to: String,
    /// Into this subscription only (its owner or an admin).
    #[arg(long, conflicts_with = "topic", required_unless_present = "topic")]
    subscription: Option<String>,
    /// Publish them again to this topic (an admin).
    #[arg(long)]
    topic: Option<String>,
    /// Only these topics (comma-separated).
    #[arg(long, value_delimiter = ',')]
    topics: Vec<String>,
    /// Only these event types (comma-separated).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Only these entity keys (comma-separated).
    #[arg(long, value_delimiter = ',')]
    keys: Vec<String>,
    /// Only this business flow.
    #[arg(long)]
    correlation_id: Option<String>,
    /// Most events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// evrouter's base URL.
    #[arg(long, default_value = "http://127.0.0.1:3500")]
    router: String,
    /// Bearer token.
    #[arg(long, env = "EVR_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Dead-letter actions.
#[derive(Clone, Copy, clap::ValueEnum)]
enum DlqAction {
    /// List dead letters (JSON).
    List,
    /// Send them through the subscription again (a redrive).
    #[value(name = "replay")]
    Redrive,
    /// Delete them.
    Purge,
}

/// Exit code for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(config.as_deref(), None, None)
            .map_err(|e| e.to_string())
            .and_then(|config| match evrouter::check_secrets(&config) {
                Ok(()) => Ok(config),
                Err(err) => Err(err.to_string()),
            }) {
            Ok(config) => {
                println!(
                    "config ok: listen {}, redis {}, {} streams",
                    config.server.listen,
                    evrouter::model::redact::url(&config.redis.url),
                    config.effective_streams().len()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Tail { listen, count } => match tail(&listen, count) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("evrouter tail: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Audit {
            since,
            principal,
            limit,
            router,
            token,
        } => {
            let mut url = format!("{}/v1/audit?limit={limit}", router.trim_end_matches('/'));
            for (name, value) in [("since", since), ("principal", principal)] {
                if let Some(value) = value {
                    url.push_str(&format!("&{name}={}", query_escape(&value)));
                }
            }
            match call_api("GET", &url, token.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("evrouter audit: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Restore {
            config,
            from,
            to,
            topics,
            slice_events,
        } => {
            let config = match load(config.as_deref(), None, None) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match restore_cli::run(&config, &from, &to, &topics, slice_events) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("evrouter restore: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Replay(args) => match replay_cli::run(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("evrouter replay: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Dlq {
            action,
            subscription,
            router,
            limit,
            token,
        } => match dlq(action, &subscription, &router, limit, token.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("evrouter dlq: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            listen,
            redis,
        } => {
            let config = match load(config.as_deref(), listen, redis) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_tracing();
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    eprintln!("evrouter: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn load(
    path: Option<&std::path::Path>,
    listen: Option<String>,
    redis: Option<String>,
) -> Result<Config, ConfigError> {
    // Variables that are not UTF-8 cannot be config overrides; they are skipped.
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    // Flags override both the file and the environment.
    if let Some(listen) = listen {
        env.push(("EVR_SERVER__LISTEN".into(), toml_string(&listen)));
    }
    if let Some(redis) = redis {
        env.push(("EVR_REDIS__URL".into(), toml_string(&redis)));
    }
    Config::load(path, env)
}

fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env(evrouter::config::LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let limit = evrouter::logs::WarningLimit::new();
    let json =
        evrouter::logs::json_wanted(std::env::var(evrouter::logs::FORMAT_ENV).ok().as_deref());
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(limit.clone());
    if json {
        // One JSON object per line: the event's fields at the top level.
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .init();
    } else {
        // Colour only for a person at a terminal: a log file or a pipe gets plain text.
        use std::io::IsTerminal;
        registry
            .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .init();
    }
    limit.report_forever();
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        evrouter::run(config, listener, shutdown_signal())
            .await
            .map_err(|err| {
                let what = if err.is_start() {
                    "evrouter could not start"
                } else {
                    "evrouter stopped with an error"
                };
                anyhow::Error::new(err).context(what)
            })
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Calls the DLQ API of a running evrouter and prints its answer.
fn dlq(
    action: DlqAction,
    subscription: &str,
    router: &str,
    limit: usize,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let base = router.trim_end_matches('/');
    let (method, url) = match action {
        DlqAction::List => ("GET", format!("{base}/v1/dlq/{subscription}?limit={limit}")),
        DlqAction::Redrive => ("POST", format!("{base}/v1/dlq/{subscription}/replay")),
        DlqAction::Purge => ("DELETE", format!("{base}/v1/dlq/{subscription}")),
    };
    call_api(method, &url, token)
}

/// Percent-encodes a query value.
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Calls evrouter's API (with the bearer token, when given) and prints its answer.
fn call_api(method: &str, url: &str, token: Option<&str>) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Full};
    let url = url.to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<bytes::Bytes>>();
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(bytes::Bytes::new()))
            .context("building the request")?;
        let response = client
            .request(request)
            .await
            .with_context(|| format!("calling {url}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        println!("{}", String::from_utf8_lossy(&body));
        anyhow::ensure!(status.is_success(), "{url} answered {status}");
        Ok(())
    })
}

/// Serves `evrouter tail`: every request's body printed on a line of its own.
fn tail(listen: &str, count: Option<u64>) -> anyhow::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        eprintln!("evrouter tail: listening on http://{listen}");
        let seen = Arc::new(AtomicU64::new(0));
        let done = Arc::new(tokio::sync::Notify::new());
        let app = {
            let (seen, done) = (seen.clone(), done.clone());
            axum::Router::new().fallback(move |body: bytes::Bytes| {
                let (seen, done) = (seen.clone(), done.clone());
                async move {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&body);
                    let _ = out.write_all(b"\n");
                    let _ = out.flush();
                    let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                    if count.is_some_and(|count| n >= count) {
                        done.notify_one();
                    }
                    axum::http::StatusCode::OK
                }
            })
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = done.notified() => {},
                    _ = shutdown_signal() => {},
                }
            })
            .await
            .context("serving")
    })
}
