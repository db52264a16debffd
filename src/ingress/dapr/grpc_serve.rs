//! The Dapr gRPC listener's connections: each holds one of the slots it shares with the
//! HTTP listener (`server.max_connections`) for its whole life; its HTTP/2 preface and
//! first frame must arrive within `server.header_read_timeout`; it is closed (GOAWAY)
//! after `dapr.grpc_idle_timeout` without a call in flight; evrouter pings it and closes it
//! when a ping is not answered; and it may carry only so many calls at once. So neither
//! silent nor half-open connections can use up the process's file descriptors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::server::Connected;

use super::grpc::DaprGrpc;
use crate::ingress::limits::{ConnectionSlots, FirstBytes};
use crate::ingress::{AppState, ClientAddr};
use crate::model::sync::lock;

/// The client's HTTP/2 preface (24 bytes) and the header of its first SETTINGS frame.
const FIRST_BYTES: usize = 24 + 9;

/// Largest header block of a call (the SDKs send a few hundred bytes).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// The gRPC listener's limits.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// The open-connection slots shared with the HTTP listener.
    pub connections: ConnectionSlots,
    /// The preface and first frame must arrive within this time.
    pub first_bytes_timeout: Duration,
    /// A connection without a call in flight for this long is closed.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 PING is sent.
    pub keepalive_interval: Duration,
    /// An unanswered PING closes the connection after this time.
    pub keepalive_timeout: Duration,
    /// Most calls at once on one connection.
    pub max_concurrent_streams: u32,
    /// How long calls in flight may finish once shutdown begins.
    pub grace: Duration,
}

impl GrpcSettings {
    /// The settings of `config`, sharing `connections` with the HTTP listener.
    pub fn new(config: &crate::config::Config, connections: ConnectionSlots) -> Self {
        Self {
            connections,
            first_bytes_timeout: config.server.header_read_timeout.get(),
            idle_timeout: config.dapr.grpc_idle_timeout.get(),
            keepalive_interval: config.dapr.grpc_keepalive_interval.get(),
            keepalive_timeout: config.dapr.grpc_keepalive_timeout.get(),
            max_concurrent_streams: config.dapr.grpc_max_concurrent_streams,
            grace: config.server.shutdown_budget.get(),
        }
    }
}

/// Whether a connection has calls in flight, and since when it has none.
struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
        })
    }

    /// When the connection will have been idle long enough, if nothing starts before.
    fn idle_at(&self, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Instant::now() + idle;
        }
        *lock(&self.since) + idle
    }
}

/// A call in flight; its end restarts the idle clock.
struct Call(Arc<Activity>);

impl Call {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(activity.clone())
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        *lock(&self.0.since) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The service of one connection: counts its calls, tells them who called.
#[derive(Clone)]
struct Tracked {
    inner: DaprGrpc,
    activity: Arc<Activity>,
    peer: ClientAddr,
    info: tonic::transport::server::TcpConnectInfo,
}

impl tower::Service<axum::http::Request<hyper::body::Incoming>> for Tracked {
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        let call = Call::begin(&self.activity);
        request.extensions_mut().insert(self.peer);
        request.extensions_mut().insert(self.info.clone());
        let answer = tower::Service::call(&mut self.inner, request);
        Box::pin(async move {
            let answer = answer.await;
            drop(call);
            answer
        })
    }
}

/// Serves the Dapr gRPC API on `listener` until `shutdown`, then lets calls in flight
/// finish within the grace period.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<AppState>,
    settings: GrpcSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let address = listener.local_addr().ok();
    tracing::info!(listen = ?address, "Dapr gRPC API serving");
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(settings.keepalive_interval))
        .keep_alive_timeout(settings.keepalive_timeout)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_LIST_BYTES);
    let service = DaprGrpc::new(app);
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Waiting for a free slot must not hide a shutdown.
        let slot = tokio::select! {
            slot = settings.connections.acquire() => match slot {
                Some(slot) => slot,
                None => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // A gRPC answer is a headers, a data and a trailers frame: without `TCP_NODELAY`
        // the later writes wait for the client's delayed ACK (tens of milliseconds).
        let _ = stream.set_nodelay(true);
        while connections.try_join_next().is_some() {}
        let activity = Activity::new();
        let tracked = Tracked {
            inner: service.clone(),
            activity: activity.clone(),
            peer: ClientAddr(peer),
            info: stream.connect_info(),
        };
        let io = FirstBytes::new(
            stream,
            FIRST_BYTES,
            settings.first_bytes_timeout,
            Some(slot),
        );
        let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(tracked));
        connections.spawn(connection(
            conn,
            activity,
            settings.clone(),
            stopped.clone(),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(settings.grace, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(grace = ?settings.grace, "gRPC calls still in flight at the end of the grace period");
        connections.abort_all();
    }
}

/// Drives one connection until it ends, is idle too long, or shutdown asks it to close.
async fn connection<C>(
    conn: C,
    activity: Arc<Activity>,
    settings: GrpcSettings,
    mut stop: watch::Receiver<bool>,
) where
    C: std::future::Future<Output = Result<(), hyper::Error>> + GracefulClose,
{
    tokio::pin!(conn);
    // Once closing: when the connection is dropped even if the client does not finish.
    let mut closing: Option<Instant> = None;
    loop {
        let wake = closing.unwrap_or_else(|| activity.idle_at(settings.idle_timeout));
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(err) = ended {
                    tracing::debug!(error = %err, "gRPC connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if closing.is_none() => {
                conn.as_mut().close();
                closing = Some(Instant::now() + settings.grace);
            }
            _ = tokio::time::sleep_until(wake) => match closing {
                Some(_) => return,
                None if wake <= Instant::now() && activity.idle_at(settings.idle_timeout) <= Instant::now() => {
                    tracing::debug!("closing an idle gRPC connection");
                    conn.as_mut().close();
                    closing = Some(Instant::now() + settings.keepalive_timeout);
                }
                None => {}
            },
        }
    }
}

/// A connection that can be asked to finish its calls and close (GOAWAY).
trait GracefulClose {
    fn close(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E> GracefulClose for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn close(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}
