//! Connection limits of the listeners: one cap on open connections shared by the HTTP and
//! the Dapr gRPC listeners (a permit held for each connection's whole life), a deadline for
//! a connection's first bytes, and the process's file-descriptor limit — raised to its hard
//! limit at start-up and checked against the cap, so that a flood of connections is refused
//! by evrouter's cap before the kernel refuses evrouter its Redis connections and files.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Descriptors kept for what is not a client connection nor a subscription: Redis writers
/// and control connections, PostgreSQL, subscribers' webhooks, the log and config files.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// Descriptors one subscription holds on an instance (its readers' and acker's Redis
/// connections, rounded up from what was measured; see docs/operations.md).
pub const DESCRIPTORS_PER_SUBSCRIPTION: u64 = 4;

/// The open-connection slots of every listener of the process.
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
}

impl ConnectionSlots {
    /// `max` slots (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// Waits for a free slot; the connection keeps the permit until it ends.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

/// What the descriptor limit is, after [`raise_descriptor_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimit {
    /// The soft limit before.
    pub was: Option<u64>,
    /// The soft limit now (`None`: unlimited).
    pub now: Option<u64>,
}

/// Raises the process's soft `RLIMIT_NOFILE` to its hard limit, as servers commonly do
/// (the soft limit is often 1,024 while the hard one is far higher).
pub fn raise_descriptor_limit() -> DescriptorLimit {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let was = limit.current;
    let now = match (limit.current, limit.maximum) {
        (Some(current), Some(hard)) if hard > current => {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => Some(hard),
                Err(err) => {
                    tracing::debug!(error = %err, "could not raise the descriptor limit");
                    Some(current)
                }
            }
        }
        (current, _) => current,
    };
    DescriptorLimit { was, now }
}

/// Why `max_connections` does not fit in `limit` descriptors once `subscriptions`
/// subscriptions and the rest evrouter needs are counted; `None` when it fits.
pub fn descriptor_shortfall(
    max_connections: usize,
    subscriptions: usize,
    limit: Option<u64>,
) -> Option<String> {
    let limit = limit?;
    let others = RESERVED_DESCRIPTORS + DESCRIPTORS_PER_SUBSCRIPTION * subscriptions as u64;
    let left = limit.saturating_sub(others);
    (max_connections as u64 > left).then(|| {
        format!(
            "server.max_connections ({max_connections}) exceeds the {left} descriptors the \
             limit of {limit} leaves after {others} for Redis, subscriptions ({subscriptions}, \
             delivery.max_subscriptions) and files: a flood of connections would make \
             evrouter fail with \"Too many open files\"; lower server.max_connections or \
             raise the limit (ulimit -n, LimitNOFILE)"
        )
    })
}

/// Raises the descriptor limit and warns when the connection cap exceeds what it leaves.
pub fn check_descriptors(max_connections: usize, subscriptions: usize) {
    let limit = raise_descriptor_limit();
    if limit.was != limit.now {
        tracing::info!(was = ?limit.was, now = ?limit.now, "raised the file-descriptor limit to its hard limit");
    }
    if let Some(why) = descriptor_shortfall(max_connections, subscriptions, limit.now) {
        tracing::warn!(descriptor_limit = ?limit.now, "{why}");
    }
}

/// A connection that must send its first `needed` bytes before a deadline: a read after
/// it without them fails with `TimedOut`, and the server drops the connection. It holds
/// its connection slot, given back when the connection is dropped.
pub struct FirstBytes<S> {
    inner: S,
    needed: usize,
    deadline: Pin<Box<Sleep>>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl<S> FirstBytes<S> {
    /// `inner`, which must send `needed` bytes within `within`, holding `slot`.
    pub fn new(
        inner: S,
        needed: usize,
        within: Duration,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            inner,
            needed,
            deadline: Box::pin(tokio::time::sleep(within)),
            _slot: slot,
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytes<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.needed = this.needed.saturating_sub(read);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending if this.needed == 0 => Poll::Pending,
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection's first bytes did not arrive in time",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytes<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_above_what_the_limit_leaves_is_named() {
        assert_eq!(descriptor_shortfall(300, 100, Some(1024)), None);
        let why = descriptor_shortfall(10_000, 0, Some(1024)).expect("too many");
        assert!(why.contains("server.max_connections (10000)"), "{why}");
        assert!(why.contains("768 descriptors"), "{why}");
        assert!(descriptor_shortfall(800, 100, Some(1024)).is_some());
        assert_eq!(descriptor_shortfall(1 << 20, 1000, None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_its_first_bytes_fails_after_the_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64);
        let mut guarded = FirstBytes::new(server, 4, Duration::from_secs(1), None);
        client.write_all(b"ab").await.expect("write");
        let mut buf = [0u8; 8];
        assert_eq!(guarded.read(&mut buf).await.expect("two bytes"), 2);
        let failed = guarded.read(&mut buf).await.expect_err("deadline");
        assert_eq!(failed.kind(), io::ErrorKind::TimedOut);

        let (mut client, server) = tokio::io::duplex(64);
        let mut guarded = FirstBytes::new(server, 2, Duration::from_secs(1), None);
        client.write_all(b"abc").await.expect("write");
        assert_eq!(guarded.read(&mut buf).await.expect("read"), 3);
        // Its first bytes came: later silence is the idle timeout's business.
        let quiet = tokio::time::timeout(Duration::from_secs(5), guarded.read(&mut buf)).await;
        assert!(quiet.is_err(), "no deadline after the first bytes");
    }
}
