//! A TCP proxy between evrouter and Redis that a test can cut (every connection reset,
//! new ones refused) or stall (connections kept, nothing forwarded), then heal: a network
//! fault without root rights or `tc`.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the proxy treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forwarded.
    Up,
    /// Held: connections stay open, nothing passes.
    Stalled,
    /// Cut: connections are reset and new ones refused.
    Cut,
}

/// A proxy on a free loopback port in front of `127.0.0.1:{target}`.
pub struct Proxy {
    pub port: u16,
    link: watch::Sender<Link>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (link, link_rx) = watch::channel(Link::Up);
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *link_rx.borrow() == Link::Cut {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let up = tokio::spawn(pipe(client_read, server_write, link_rx.clone()));
                let down = tokio::spawn(pipe(server_read, client_write, link_rx.clone()));
                let mut all = tracked.lock().expect("connections");
                all.push(up);
                all.push(down);
            }
        });
        Self {
            port,
            link,
            connections,
            accept,
        }
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Resets every connection and refuses new ones until healed.
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
        for task in self.connections.lock().expect("connections").drain(..) {
            task.abort();
        }
    }

    /// Holds every byte until healed.
    pub fn stall(&self) {
        self.link.send_replace(Link::Stalled);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.link.send_replace(Link::Up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.connections.lock().expect("connections").drain(..) {
            task.abort();
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read while stalled wait here until the link is up (or cut).
        loop {
            let state = *link.borrow_and_update();
            match state {
                Link::Up => break,
                Link::Cut => return,
                Link::Stalled => {
                    if link.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
