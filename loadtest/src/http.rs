//! Open-loop HTTP load: a scheduler emits requests at the offered rate with their intended
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

use crate::report::{Percentiles, Report};
use crate::{bodies, Args};

struct Job {
    intended: Instant,
    body: usize,
}

struct WorkerStats {
    latency: Histogram<u64>,
    requests_ok: u64,
    errors: BTreeMap<String, u64>,
    last_done: Option<Instant>,
}

/// Runs the load against evrouter and reports on the measured window.
pub async fn run(args: &Args) -> anyhow::Result<Report> {
    let batch = args.batch.max(1);
    let bodies = Arc::new(bodies::request_bodies(512, batch, args.keys));
    let uri: Uri = format!(
        "{}/v1/publish/{}",
        args.router.trim_end_matches('/'),
        args.topic
    )
    .parse()
    .context("router URL")?;
    let requests_per_sec = args.rate as f64 / batch as f64;
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
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

    let mut workers = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        let rx = rx.clone();
        let uri = uri.clone();
        let bodies = bodies.clone();
        workers.push(tokio::spawn(worker(rx, uri, bodies, measure_from, end)));
    }
    drop(rx);
    tokio::task::spawn_blocking(move || scheduler.join())
        .await?
        .map_err(|_| anyhow::anyhow!("scheduler thread panicked"))?;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut requests_ok = 0;
    let mut errors = BTreeMap::new();
    let mut last_done = measure_from;
    for worker in workers {
        let stats = worker.await??;
        latency.add(&stats.latency)?;
        requests_ok += stats.requests_ok;
        for (status, count) in stats.errors {
            *errors.entry(status).or_insert(0) += count;
        }
        if let Some(done) = stats.last_done {
            last_done = last_done.max(done);
        }
    }
    let elapsed = (last_done - measure_from).max(args.duration).as_secs_f64();
    let events_ok = requests_ok * batch as u64;
    Ok(Report {
        mode: format!("http publish to {}", args.router),
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
    })
}

async fn worker(
    rx: async_channel::Receiver<Job>,
    uri: Uri,
    bodies: Arc<Vec<Bytes>>,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<WorkerStats> {
    let mut stats = WorkerStats {
        latency: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        requests_ok: 0,
        errors: BTreeMap::new(),
        last_done: None,
    };
    let authority = uri.authority().context("URL has no host")?.clone();
    let mut sender = None;
    while let Ok(job) = rx.recv().await {
        if sender.is_none() {
            sender = connect(authority.as_str()).await.ok();
        }
        let outcome = match sender.as_mut() {
            Some(s) => send(s, &uri, authority.as_str(), bodies[job.body].clone()).await,
            None => Err("connect".to_string()),
        };
        let done = Instant::now();
        if outcome.is_err() {
            sender = None;
        }
        if job.intended < measure_from || job.intended >= end {
            continue;
        }
        let micros = done.saturating_duration_since(job.intended).as_micros() as u64;
        stats.latency.saturating_record(micros.max(1));
        stats.last_done = Some(done);
        match outcome {
            Ok(200) => stats.requests_ok += 1,
            Ok(status) => *stats.errors.entry(status.to_string()).or_insert(0) += 1,
            Err(kind) => *stats.errors.entry(kind).or_insert(0) += 1,
        }
    }
    Ok(stats)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(authority: &str) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn send(sender: &mut Sender, uri: &Uri, host: &str, body: Bytes) -> Result<u16, String> {
    sender.ready().await.map_err(|_| "connection".to_string())?;
    let request = Request::post(uri.path())
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
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
}
