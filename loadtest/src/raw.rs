//! The ceiling beside evrouter: pipelined XADD of the same entries (encoded envelopes of the
//! same events) straight into Redis, several pipelines in flight, as fast as Redis takes them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use evrouter::catalog::partition_of;
use evrouter::model::envelope::Envelope;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;

use crate::args::Args;
use crate::bodies;
use crate::report::{Percentiles, Report};

const PIPELINES_IN_FLIGHT: usize = 4;
const PARTITIONS: u32 = 16;
/// Consumers reading and acking at once.
const READERS: usize = 2;

/// Measures pipelined XADD throughput for `warmup + duration` and reports the measured part.
pub async fn run(args: &Args, url: &str) -> anyhow::Result<Report> {
    let entries: Vec<(String, Vec<u8>)> = (0..4096u64)
        .map(|n| {
            let event = bodies::order_event(n, args.keys);
            let payload = serde_json::to_vec(&event).unwrap_or_default();
            let key = event["data"]["order_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let partition = partition_of(&key, PARTITIONS);
            let envelope = Envelope {
                event_id: format!("evt_order_{n}"),
                topic: "order.created".into(),
                event_type: "order.created".into(),
                key,
                sequence: Some(1),
                received_us: 0,
                service: "order-service".into(),
                correlation_id: format!("corr_{n}"),
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                tracestate: None,
                payload,
                format: Default::default(),
                content_type: None,
                expires_us: None,
            };
            (format!("evr-raw:{{order.{partition}}}"), envelope.encode())
        })
        .collect();
    let client = redis::Client::open(url)?;
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let readers = if args.raw_write_only {
        Vec::new()
    } else {
        let mut setup = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        for p in 0..PARTITIONS {
            let _: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(format!("evr-raw:{{order.{p}}}"))
                .arg("raw")
                .arg("$")
                .arg("MKSTREAM")
                .query_async(&mut setup)
                .await;
        }
        let mut readers = Vec::new();
        for r in 0..READERS {
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let keys: Vec<String> = (0..PARTITIONS)
                .filter(|p| *p as usize % READERS == r)
                .map(|p| format!("evr-raw:{{order.{p}}}"))
                .collect();
            readers.push(tokio::spawn(read_and_ack(conn, keys, r, measure_from, end)));
        }
        readers
    };
    let mut tasks = Vec::new();
    for t in 0..PIPELINES_IN_FLIGHT {
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let mut conn: MultiplexedConnection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let entries = entries.clone();
        let depth = args.pipeline.max(1);
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut written = 0u64;
            let mut offset = t * 997;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let mut pipe = redis::pipe();
                for i in 0..depth {
                    let (key, value) = &entries[(offset + i) % entries.len()];
                    pipe.cmd("XADD")
                        .arg(key)
                        .arg("*")
                        .arg(evrouter::model::envelope::ENTRY_FIELD)
                        .arg(value);
                }
                offset += depth;
                let _: Vec<String> = pipe.query_async(&mut conn).await?;
                if sent >= measure_from {
                    written += depth as u64;
                    latency.saturating_record(sent.elapsed().as_micros().max(1) as u64);
                }
            }
            anyhow::Ok((written, latency))
        }));
    }
    let mut written = 0;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        let (w, h) = task.await??;
        written += w;
        latency.add(&h)?;
    }
    let elapsed = Instant::now()
        .saturating_duration_since(measure_from)
        .max(Duration::from_millis(1));
    let mut read = None;
    for reader in readers {
        *read.get_or_insert(0u64) += reader.await??;
    }
    // Leave Redis as it was.
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    for p in 0..PARTITIONS {
        let _: i64 = redis::cmd("DEL")
            .arg(format!("evr-raw:{{order.{p}}}"))
            .query_async(&mut conn)
            .await?;
    }
    let secs = elapsed.as_secs_f64();
    Ok(Report {
        chaos: None,
        end_to_end: None,
        mode: format!(
            "raw pipelined XADD to {url} (depth {}, {PIPELINES_IN_FLIGHT} in flight)",
            args.pipeline
        ),
        offered_events_per_sec: 0,
        achieved_events_per_sec: written as f64 / secs,
        achieved_requests_per_sec: (written / args.pipeline.max(1) as u64) as f64 / secs,
        batch: args.pipeline,
        connections: PIPELINES_IN_FLIGHT,
        duration_secs: secs,
        events_ok: written,
        requests_ok: written / args.pipeline.max(1) as u64,
        errors_by_status: BTreeMap::new(),
        latency_ms: Percentiles::from_micros(&latency),
        scenario: "raw".into(),
        raw_read_events_per_sec: read.map(|r| r as f64 / args.duration.as_secs_f64()),
        cpu_seconds: None,
        timeline: Vec::new(),
        server: None,
        archive: None,
    })
}

/// Reads new entries of `keys` with XREADGROUP and acks them with pipelined XACKs until
/// `end`; returns how many were read and acked in the measured window.
async fn read_and_ack(
    mut conn: MultiplexedConnection,
    keys: Vec<String>,
    reader: usize,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<u64> {
    let consumer = format!("raw-{reader}");
    let mut read = 0u64;
    while Instant::now() < end {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg("raw")
            .arg(&consumer)
            .arg("COUNT")
            .arg(512)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS");
        for key in &keys {
            cmd.arg(key);
        }
        for _ in &keys {
            cmd.arg(">");
        }
        let reply: Option<redis::streams::StreamReadReply> = cmd.query_async(&mut conn).await?;
        let Some(reply) = reply else { continue };
        let mut pipe = redis::pipe();
        let mut n = 0;
        for stream in &reply.keys {
            if stream.ids.is_empty() {
                continue;
            }
            let ids: Vec<&str> = stream.ids.iter().map(|e| e.id.as_str()).collect();
            n += ids.len() as u64;
            pipe.cmd("XACK")
                .arg(&stream.key)
                .arg("raw")
                .arg(ids)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
        if Instant::now() >= measure_from {
            read += n;
        }
    }
    Ok(read)
}
