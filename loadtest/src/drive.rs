//! The driver of one run against evrouter: open-loop HTTP load, where a scheduler emits requests at the offered rate with their intended
//! send times; connection workers send them; latency runs from the intended time, so a
//! stall shows up in the tail instead of slowing the generator (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;

use crate::args::Args;
use crate::bodies;
use crate::bodies::{LiveBodies, Mix};
use crate::progress::{self, Live};
use crate::report::{EndToEnd, Percentiles, Report};
use crate::sink::Sink;

struct Job {
    intended: Instant,
    body: usize,
}

struct WorkerStats {
    latency: Histogram<u64>,
    requests_ok: u64,
    /// Events in requests answered 200, warm-up included (for the loss check).
    events_published: u64,
    errors: BTreeMap<String, u64>,
    last_done: Option<Instant>,
    /// The events of every request answered 2xx: (first id, count).
    acked: Vec<(u64, u32)>,
}

/// Runs the load against evrouter and reports on the measured window.
pub async fn run(
    args: &Args,
    chaos: Option<Arc<tokio::sync::Mutex<crate::spawn::System>>>,
    routers: Vec<String>,
) -> anyhow::Result<Report> {
    let batch = args.batch.max(1);
    let bodies = Arc::new(bodies::request_bodies(512, batch, args.keys));
    let mix = Arc::new(match args.scenario.as_str() {
        "seed-mix" => Mix::seed(),
        _ => Mix::single(&args.topic),
    });
    let uri: Uri = format!("{}/", args.router.trim_end_matches('/'))
        .parse()
        .context("router URL")?;
    // The subscriber is set up before the schedule starts, so no request is held back.
    let sink = match &args.subscription_mode {
        Some(mode) => {
            let expected = args.rate as f64 * (args.warmup + args.duration).as_secs_f64() * 1.05;
            let sink = Sink::start((expected as usize).min(MAX_EXPECTED)).await?;
            register(args, &sink.url(), mode, mix.topics()).await?;
            Some(sink)
        }
        None => None,
    };
    let requests_per_sec = args.rate as f64 / batch as f64;
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    if let Some(sink) = &sink {
        let from = unix_us()
            + measure_from
                .saturating_duration_since(Instant::now())
                .as_micros() as u64;
        sink.set_window(from, from + args.duration.as_micros() as u64);
    }
    let chaos = chaos.map(|system| tokio::spawn(crate::chaos::run(system, measure_from, end)));
    let authorities: Vec<String> = routers
        .iter()
        .filter_map(|r| r.parse::<Uri>().ok())
        .filter_map(|u| u.authority().map(|a| a.as_str().to_string()))
        .collect();
    let capacity = ((requests_per_sec * 10.0) as usize).max(1024);
    let (tx, rx) = async_channel::bounded::<Job>(capacity);

    // The schedule runs on its own thread with sub-millisecond sleeps (Tokio's timers tick
    // in milliseconds), handing each request over at its intended time.
    let scheduler = std::thread::spawn(move || {
        let mut sent: u64 = 0;
        loop {
            let intended = start + Duration::from_secs_f64(sent as f64 / requests_per_sec);
            if intended >= end {
                break;
            }
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            let job = Job {
                intended,
                body: (sent % 512) as usize,
            };
            if tx.send_blocking(job).is_err() {
                return;
            }
            sent += 1;
        }
    });

    let live = Live::new()?;
    let progress = tokio::spawn(progress::run(
        live.clone(),
        start,
        end,
        requests_per_sec,
        batch,
        args.quiet,
    ));
    let connections = args.connections.max(1);
    let mut workers = Vec::with_capacity(connections);
    for index in 0..connections {
        let rx = rx.clone();
        // Bodies are made at send time when they must be unique or vary by topic.
        let dapr = args.api.starts_with("dapr");
        let source = if sink.is_some() || args.scenario == "seed-mix" || dapr {
            Source::Live(
                LiveBodies::new(index, (args.keys / connections).max(1)).padded(args.pad),
                batch,
            )
        } else {
            Source::Fixed(bodies.clone())
        };
        let grpc = args.api == "dapr-grpc";
        let authorities = if grpc {
            args.grpc.clone()
        } else {
            authorities.clone()
        };
        let target = Target {
            current: index % authorities.len().max(1),
            authorities,
            grpc,
            token: args.token.clone(),
            mix: mix.clone(),
            rng: fastrand::Rng::with_seed(index as u64 + 1),
            dapr,
            auth: args.token.as_ref().map(|t| format!("Bearer {t}")),
        };
        workers.push(tokio::spawn(worker(
            rx,
            target,
            source,
            live.clone(),
            measure_from,
            end,
        )));
    }
    drop(rx);
    let noisy = args.noisy_rate.map(|rate| {
        tokio::spawn(noisy(
            uri.clone(),
            bodies[0].clone(),
            rate as f64 / batch as f64,
            end,
        ))
    });
    tokio::task::spawn_blocking(move || scheduler.join())
        .await?
        .map_err(|_| anyhow::anyhow!("scheduler thread panicked"))?;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut requests_ok = 0;
    let mut events_published = 0;
    let mut errors = BTreeMap::new();
    let mut last_done = measure_from;
    let mut acked = Vec::new();
    for worker in workers {
        let mut stats = worker.await??;
        acked.append(&mut stats.acked);
        latency.add(&stats.latency)?;
        requests_ok += stats.requests_ok;
        events_published += stats.events_published;
        for (status, count) in stats.errors {
            *errors.entry(status).or_insert(0) += count;
        }
        if let Some(done) = stats.last_done {
            last_done = last_done.max(done);
        }
    }
    if let Some(noisy) = noisy {
        let (sent, refused) = noisy.await?;
        eprintln!("noisy publisher      {sent} requests, {refused} refused with 429");
    }
    let elapsed = (last_done - measure_from).max(args.duration).as_secs_f64();
    let events_ok = requests_ok * batch as u64;
    let timeline = progress.await.unwrap_or_default();
    let chaos = match chaos {
        Some(task) => Some(task.await?),
        None => None,
    };
    let end_to_end = match sink {
        Some(sink) => Some(drain(args, sink, events_published, &acked).await?),
        None => None,
    };
    Ok(Report {
        chaos,
        end_to_end,
        scenario: args.scenario.clone(),
        raw_read_events_per_sec: None,
        cpu_seconds: None,
        timeline,
        mode: match args.api.as_str() {
            "dapr-grpc" => format!("Dapr gRPC publish to {}", args.grpc.join(", ")),
            "dapr" => format!("Dapr HTTP publish to {}", args.router),
            _ => format!("http publish to {}", args.router),
        },
        offered_events_per_sec: args.rate,
        achieved_events_per_sec: events_ok as f64 / elapsed,
        achieved_requests_per_sec: requests_ok as f64 / elapsed,
        batch,
        connections: args.connections,
        duration_secs: elapsed,
        events_ok,
        requests_ok,
        errors_by_status: errors,
        latency_ms: Percentiles::from_micros(&latency),
        server: None,
        archive: None,
    })
}

/// Where a worker's request bodies come from.
enum Source {
    /// Made before the run, cycled.
    Fixed(Arc<Vec<Bytes>>),
    /// Made at send time with unique ids (end-to-end runs), with the batch size.
    Live(LiveBodies, usize),
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Where a worker's requests go.
struct Target {
    /// Every instance's `host:port`; a worker moves to the next when its connection fails.
    authorities: Vec<String>,
    current: usize,
    mix: Arc<Mix>,
    rng: fastrand::Rng,
    /// Publish through the Dapr API.
    dapr: bool,
    /// Through its gRPC form (`authorities` are then the gRPC APIs).
    grpc: bool,
    /// The token, for the gRPC API's `dapr-api-token`.
    token: Option<String>,
    /// `Authorization` header value, when evrouter needs a token.
    auth: Option<String>,
}

async fn worker(
    rx: async_channel::Receiver<Job>,
    mut target: Target,
    mut source: Source,
    live: Arc<Live>,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<WorkerStats> {
    let mut stats = WorkerStats {
        latency: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        requests_ok: 0,
        events_published: 0,
        errors: BTreeMap::new(),
        last_done: None,
        acked: Vec::new(),
    };
    anyhow::ensure!(!target.authorities.is_empty(), "no evrouter to publish to");
    let mut sender = None;
    let mut grpc_sender: Option<crate::grpc::GrpcSender> = None;
    while let Ok(job) = rx.recv().await {
        let authority = target.authorities[target.current].clone();
        if target.grpc {
            if grpc_sender.is_none() {
                grpc_sender = crate::grpc::GrpcSender::connect(&authority, target.token.as_deref())
                    .await
                    .ok();
            }
        } else if sender.is_none() {
            sender = connect(authority.as_str()).await.ok();
        }
        let topic = target.mix.pick(&mut target.rng).to_string();
        let first_id = match &source {
            Source::Live(bodies, _) => bodies.next_id(),
            Source::Fixed(_) => 0,
        };
        let (body, events, key) = match &mut source {
            Source::Fixed(bodies) => (bodies[job.body].clone(), 0, String::new()),
            Source::Live(bodies, batch) => {
                // The intended send time, as wall-clock microseconds.
                let lag = Instant::now().saturating_duration_since(job.intended);
                let sent_us = unix_us().saturating_sub(lag.as_micros() as u64);
                let (body, key) = bodies.next(&topic, *batch, sent_us, target.dapr);
                (body, *batch as u64, key)
            }
        };
        let path = match (target.dapr, events > 1) {
            (false, _) => format!("/v1/publish/{topic}"),
            (true, true) => format!("/v1.0-alpha1/publish/bulk/pubsub/{topic}"),
            (true, false) => format!("/v1.0/publish/pubsub/{topic}?metadata.partitionKey={key}"),
        };
        let outcome = match (grpc_sender.as_mut(), sender.as_mut()) {
            (Some(g), _) => {
                tokio::time::timeout(REQUEST_TIMEOUT, g.send(&topic, body, &key, events > 1))
                    .await
                    .unwrap_or_else(|_| Err("timeout".to_string()))
            }
            (None, Some(s)) => {
                send(s, &path, authority.as_str(), target.auth.as_deref(), body).await
            }
            (None, None) => Err("connect".to_string()),
        };
        let done = Instant::now();
        if !matches!(outcome, Ok(200 | 204 | 400..=499)) {
            // No answer, or one that says to try elsewhere: the next instance.
            sender = None;
            grpc_sender = None;
            target.current = (target.current + 1) % target.authorities.len();
        }
        // evrouter's API answers 200, Dapr's 204.
        let stored = matches!(outcome, Ok(200 | 204));
        if stored {
            stats.events_published += events;
            if events > 0 {
                stats.acked.push((first_id, events as u32));
            }
        }
        if job.intended < measure_from || job.intended >= end {
            continue;
        }
        let micros = done.saturating_duration_since(job.intended).as_micros() as u64;
        live.record(stored, micros);
        stats.latency.saturating_record(micros.max(1));
        stats.last_done = Some(done);
        match outcome {
            Ok(200 | 204) => stats.requests_ok += 1,
            Ok(status) => *stats.errors.entry(status.to_string()).or_insert(0) += 1,
            Err(kind) => *stats.errors.entry(kind).or_insert(0) += 1,
        }
    }
    Ok(stats)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The noisy publisher's token (`--noisy-rate`).
pub const NOISY_TOKEN: &str = "loadtest-noisy-publisher";

/// Publishes `body` at `per_sec` requests a second until `end` with the noisy token, on
/// four connections; returns the requests sent and how many were refused with 429.
async fn noisy(uri: Uri, body: Bytes, per_sec: f64, end: Instant) -> (u64, u64) {
    let Some(authority) = uri.authority().map(|a| a.as_str().to_string()) else {
        return (0, 0);
    };
    let auth = format!("Bearer {NOISY_TOKEN}");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (authority, auth, body) = (authority.clone(), auth.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut ticker =
                tokio::time::interval(Duration::from_secs_f64(4.0 / per_sec.max(0.001)));
            let (mut sent, mut refused) = (0u64, 0u64);
            let mut sender = None;
            while Instant::now() < end {
                ticker.tick().await;
                if sender.is_none() {
                    sender = connect(&authority).await.ok();
                }
                let Some(s) = sender.as_mut() else { continue };
                match send(
                    s,
                    "/v1/publish/loadtest.noise",
                    &authority,
                    Some(&auth),
                    body.clone(),
                )
                .await
                {
                    Ok(status) => {
                        sent += 1;
                        refused += u64::from(status == 429);
                    }
                    Err(_) => sender = None,
                }
            }
            (sent, refused)
        }));
    }
    let mut totals = (0, 0);
    for task in tasks {
        if let Ok((sent, refused)) = task.await {
            totals.0 += sent;
            totals.1 += refused;
        }
    }
    totals
}

async fn connect(authority: &str) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn send(
    sender: &mut Sender,
    path: &str,
    host: &str,
    auth: Option<&str>,
    body: Bytes,
) -> Result<u16, String> {
    sender.ready().await.map_err(|_| "connection".to_string())?;
    let mut request = Request::post(path)
        .header("host", host)
        .header("content-type", "application/json");
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    // An answer that never comes is an error of its own ("timeout"), and the worker moves
    // on with a new connection instead of waiting for ever.
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| "connection".to_string())?;
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| "connection".to_string())?;
        Ok(status)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err("timeout".to_string()))
}

/// Most distinct events the sink makes room for up front (about 1.5 GB of ids).
const MAX_EXPECTED: usize = 100_000_000;

/// How long a publish may go unanswered before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an administrative call (registering or deleting a subscription) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers (or replaces) the `loadtest` subscription pointing at the sink, and with
/// `--subscriptions N` the N - 1 others (`loadtest-2` …) whose deliveries the sink answers
/// without checking.
async fn register(
    args: &Args,
    sink_url: &str,
    mode: &str,
    topics: &[String],
) -> anyhow::Result<()> {
    let discard = sink_url.replace("/events", "/discard");
    for (name, url) in subscription_names(args)
        .into_iter()
        .zip(std::iter::once(sink_url).chain(std::iter::repeat(discard.as_str())))
    {
        let mut spec = serde_json::json!({
            "name": name,
            "topics": topics,
            "endpoints": [url],
            "mode": mode,
            "bulk": {"max_events": 100, "max_wait_ms": 5},
            "ordering": args.ordering,
            "max_in_flight": 10000,
            "start": "latest",
        });
        if args.ordering == "sequence" {
            // Every key's life is numbered from 1 (`metadata.sequence`).
            spec["reorder"] = serde_json::json!({"start": 1});
        }
        let status = admin(
            args,
            "PUT",
            &format!("/v1/subscriptions/{name}"),
            Some(spec.to_string()),
        )
        .await?;
        anyhow::ensure!(
            status == 200 || status == 201,
            "registering subscription {name} answered {status}"
        );
    }
    // Let every instance start reading before the load begins.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// The subscriptions a run registers: `loadtest`, then `loadtest-2` … `loadtest-N`.
fn subscription_names(args: &Args) -> Vec<String> {
    std::iter::once("loadtest".to_string())
        .chain((2..=args.subscriptions.max(1)).map(|i| format!("loadtest-{i}")))
        .collect()
}

async fn admin(args: &Args, method: &str, path: &str, body: Option<String>) -> anyhow::Result<u16> {
    let uri: Uri = format!("{}{path}", args.router.trim_end_matches('/')).parse()?;
    let authority = uri
        .authority()
        .context("URL has no host")?
        .as_str()
        .to_string();
    let mut sender = tokio::time::timeout(ADMIN_TIMEOUT, connect(&authority))
        .await
        .with_context(|| format!("connecting to {authority}"))??;
    let mut request = Request::builder()
        .method(method)
        .uri(uri.path())
        .header("host", authority)
        .header("content-type", "application/json");
    if let Some(token) = &args.token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = tokio::time::timeout(ADMIN_TIMEOUT, sender.send_request(request))
        .await
        .with_context(|| format!("{method} {path}: no answer within {ADMIN_TIMEOUT:?}"))??;
    Ok(response.status().as_u16())
}

/// Waits until every acknowledged event has arrived (or the drain period ends), then
/// reports; lost events are those acknowledged (2xx) and never delivered, by id.
async fn drain(
    args: &Args,
    sink: Sink,
    published: u64,
    acked: &[(u64, u32)],
) -> anyhow::Result<EndToEnd> {
    let deadline = Instant::now() + args.drain;
    if !args.quiet {
        eprintln!(
            "draining: waiting up to {:?} for {published} acknowledged events",
            args.drain
        );
    }
    let missing = |sink: &Sink| -> u64 {
        let Ok(state) = sink.state.lock() else {
            return u64::MAX;
        };
        acked
            .iter()
            .flat_map(|(first, n)| *first..*first + u64::from(*n))
            .filter(|id| !state.has(*id))
            .count() as u64
    };
    while Instant::now() < deadline {
        if sink.unique() >= published && missing(&sink) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lost = missing(&sink);
    if !args.quiet {
        eprintln!("drained: {lost} acknowledged events never delivered");
    }
    for name in subscription_names(args) {
        let _ = admin(args, "DELETE", &format!("/v1/subscriptions/{name}"), None).await;
    }
    let state = sink
        .state
        .lock()
        .map_err(|_| anyhow::anyhow!("sink state poisoned"))?;
    Ok(EndToEnd {
        subscription_mode: args.subscription_mode.clone().unwrap_or_default(),
        published,
        delivered_unique: state.unique,
        lost,
        duplicates: state.duplicates,
        order_violations: if args.ordering != "none" {
            state.order_violations
        } else {
            0
        },
        unexpected: state.unexpected,
        delivered_events_per_sec: state.measured as f64 / args.duration.as_secs_f64(),
        latency_ms: Percentiles::from_micros(&state.latency),
    })
}
