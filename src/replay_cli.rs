//! `evrouter replay`: starts a replay through a running evrouter's API, draws its progress
//! from `GET /v1/replays/{id}` until it ends, and cancels it on Ctrl-C.

use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::ReplayArgs;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<bytes::Bytes>,
>;

async fn call(
    client: &Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let request = request
        .body(Full::new(bytes::Bytes::from(bytes)))
        .context("building the request")?;
    let response = client
        .request(request)
        .await
        .with_context(|| format!("calling {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Runs the replay to its end; whether it finished with nothing failed.
pub fn run(args: &ReplayArgs) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let client: Client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let base = args.router.trim_end_matches('/');
        let token = args.token.as_deref();
        let target = match (&args.subscription, &args.topic) {
            (Some(subscription), _) => json!({ "subscription": subscription }),
            (None, Some(topic)) => json!({ "topic": topic }),
            (None, None) => anyhow::bail!("give --subscription or --topic"),
        };
        let spec = json!({
            "from": args.from,
            "to": args.to,
            "filter": {
                "topics": args.topics,
                "types": args.types,
                "keys": args.keys,
                "correlation_id": args.correlation_id,
            },
            "target": target,
            "rate": args.rate,
        });
        let (status, started) = call(
            &client,
            "POST",
            &format!("{base}/v1/replay"),
            token,
            Some(&spec),
        )
        .await?;
        anyhow::ensure!(
            status == 202,
            "{base}/v1/replay answered {status}: {started}"
        );
        let id = started["id"].as_str().context("no replay id")?.to_string();
        let total = started["total"].as_u64().unwrap_or(0);
        eprintln!("replay {id}: {total} events");
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let url = format!("{base}/v1/replays/{id}");
        let last = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    call(&client, "DELETE", &url, token, None).await?;
                    bar.set_message("cancelling");
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let (_, now) = call(&client, "GET", &url, token, None).await?;
            let done = now["done"].as_u64().unwrap_or(0) + now["failed"].as_u64().unwrap_or(0);
            bar.set_position(done);
            bar.set_message(format!(
                "{:.0} events/s, {} failed{}",
                now["rate"].as_f64().unwrap_or(0.0),
                now["failed"].as_u64().unwrap_or(0),
                now["eta_s"]
                    .as_f64()
                    .map(|eta| format!(", {eta:.0} s left"))
                    .unwrap_or_default()
            ));
            if now["state"] != "running" {
                break now;
            }
        };
        bar.finish();
        println!("{last}");
        Ok(last["state"] == "done" && last["failed"].as_u64() == Some(0))
    })
}
