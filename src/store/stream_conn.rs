//! The reader's own connection for `XREADGROUP`: a plain socket whose replies are parsed in
//! place (`redis-protocol`'s range decoder) and whose entry bodies are handed on as slices
//! of the bytes read, with no value tree and no copy. Stream replies are most of the bytes
//! evrouter reads from Redis; through the general client their parsing was the largest
//! single cost of delivery. Every other command keeps using the general client.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo, RedisError, RedisResult};
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::model::envelope::ENTRY_FIELD;

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 256 * 1024;

trait Socket: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Socket for T {}

/// The entries of one stream in a reply: its key, then each entry's id and the value of
/// its entry field (empty when the entry has none).
pub type StreamEntries = (Bytes, Vec<(Bytes, Bytes)>);

/// A connection that connects on first use and again after any error.
pub struct StreamConn {
    info: ConnectionInfo,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    response_timeout: Duration,
    socket: Option<Box<dyn Socket>>,
    buf: BytesMut,
}

impl StreamConn {
    /// A connection to `info`'s server; nothing is opened yet.
    pub fn new(
        info: ConnectionInfo,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Self {
            info,
            tls,
            connect_timeout,
            response_timeout,
            socket: None,
            buf: BytesMut::new(),
        }
    }

    /// Sends an `XREADGROUP` (or any command answered like one) and returns the entries of
    /// its reply (none when the block timed out). A server error comes back with its code
    /// (`NOGROUP` …); after an I/O error or a timeout the connection is dropped and the
    /// next call opens a new one.
    pub async fn read_streams(&mut self, cmd: &redis::Cmd) -> RedisResult<Vec<StreamEntries>> {
        let packed = cmd.get_packed_command();
        let result = tokio::time::timeout(self.response_timeout, self.round_trip(&packed)).await;
        let (frame, data) = match result {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) => {
                self.socket = None;
                return Err(err);
            }
            Err(_) => {
                self.socket = None;
                return Err(io_error(
                    std::io::ErrorKind::TimedOut,
                    "redis read timed out",
                ));
            }
        };
        match frame {
            RangeFrame::Error(range) => Err(server_error(slice(&data, range).as_deref())),
            frame => Ok(stream_entries(frame, &data)),
        }
    }

    async fn round_trip(&mut self, packed: &[u8]) -> RedisResult<(RangeFrame, Bytes)> {
        if self.socket.is_none() {
            let socket = tokio::time::timeout(self.connect_timeout, self.connect())
                .await
                .map_err(|_| io_error(std::io::ErrorKind::TimedOut, "redis connect timed out"))??;
            self.socket = Some(socket);
            self.buf.clear();
        }
        let Some(socket) = self.socket.as_mut() else {
            return Err(io_error(std::io::ErrorKind::NotConnected, "not connected"));
        };
        socket.write_all(packed).await?;
        read_frame(socket, &mut self.buf).await
    }

    async fn connect(&self) -> RedisResult<Box<dyn Socket>> {
        let mut socket: Box<dyn Socket> = match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            ConnectionAddr::TcpTls { host, port, .. } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                let Some(config) = &self.tls else {
                    return Err(io_error(
                        std::io::ErrorKind::Unsupported,
                        "rediss:// without a TLS configuration",
                    ));
                };
                let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                    io_error(std::io::ErrorKind::InvalidInput, &format!("{host}: {e}"))
                })?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await?;
                Box::new(tls)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            other => {
                return Err(io_error(
                    std::io::ErrorKind::Unsupported,
                    &format!("the stream reader cannot connect to {other}"),
                ))
            }
        };
        let settings = self.info.redis_settings();
        let mut buf = BytesMut::new();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            expect_ok(&mut socket, &mut buf, &auth).await?;
        }
        if settings.db() != 0 {
            expect_ok(
                &mut socket,
                &mut buf,
                redis::cmd("SELECT").arg(settings.db()),
            )
            .await?;
        }
        Ok(socket)
    }
}

async fn expect_ok(
    socket: &mut Box<dyn Socket>,
    buf: &mut BytesMut,
    cmd: &redis::Cmd,
) -> RedisResult<()> {
    socket.write_all(&cmd.get_packed_command()).await?;
    match read_frame(socket, buf).await? {
        (RangeFrame::Error(range), data) => Err(server_error(slice(&data, range).as_deref())),
        _ => Ok(()),
    }
}

/// Reads until one whole reply is in `buf`, then splits it off (with the frame's ranges
/// relative to the returned bytes).
async fn read_frame(
    socket: &mut Box<dyn Socket>,
    buf: &mut BytesMut,
) -> RedisResult<(RangeFrame, Bytes)> {
    loop {
        if !buf.is_empty() {
            match decode_range(buf) {
                Ok(Some((frame, used))) => return Ok((frame, buf.split_to(used).freeze())),
                Ok(None) => {}
                Err(err) => {
                    return Err(io_error(
                        std::io::ErrorKind::InvalidData,
                        &format!("bad reply from redis: {err:?}"),
                    ))
                }
            }
        }
        buf.reserve(READ_CHUNK);
        if socket.read_buf(buf).await? == 0 {
            return Err(io_error(
                std::io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
    }
}

fn io_error(kind: std::io::ErrorKind, message: &str) -> RedisError {
    RedisError::from(std::io::Error::new(kind, message.to_string()))
}

fn server_error(text: Option<&[u8]>) -> RedisError {
    let text = String::from_utf8_lossy(text.unwrap_or(b"ERR"));
    let (code, detail) = match text.split_once(' ') {
        Some((code, detail)) => (code.to_string(), Some(detail.to_string())),
        None => (text.to_string(), None),
    };
    redis::make_extension_error(code, detail)
}

/// The entries of an `XREADGROUP`/`XREAD` reply (RESP2: an array of `[key, entries]`, each
/// entry `[id, [field, value, …]]`); a null reply (the block timed out) has none.
fn stream_entries(frame: RangeFrame, data: &Bytes) -> Vec<StreamEntries> {
    let RangeFrame::Array(streams) = frame else {
        return Vec::new();
    };
    streams
        .into_iter()
        .filter_map(|stream| {
            let RangeFrame::Array(pair) = stream else {
                return None;
            };
            let mut pair = pair.into_iter();
            let key = bulk(pair.next()?, data)?;
            let RangeFrame::Array(entries) = pair.next()? else {
                return None;
            };
            let entries = entries
                .into_iter()
                .filter_map(|entry| {
                    let RangeFrame::Array(parts) = entry else {
                        return None;
                    };
                    let mut parts = parts.into_iter();
                    let id = bulk(parts.next()?, data)?;
                    let value = match parts.next() {
                        Some(RangeFrame::Array(fields)) => field_value(fields, data),
                        _ => None,
                    };
                    Some((id, value.unwrap_or_default()))
                })
                .collect();
            Some((key, entries))
        })
        .collect()
}

fn field_value(fields: Vec<RangeFrame>, data: &Bytes) -> Option<Bytes> {
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if bulk(name, data).as_deref() == Some(ENTRY_FIELD.as_bytes()) {
            return bulk(value, data);
        }
    }
    None
}

fn bulk(frame: RangeFrame, data: &Bytes) -> Option<Bytes> {
    match frame {
        RangeFrame::BulkString(range) | RangeFrame::SimpleString(range) => slice(data, range),
        _ => None,
    }
}

/// The bytes of a frame's `(start, end)` range, shared with `data` (none if out of it).
fn slice(data: &Bytes, (start, end): (usize, usize)) -> Option<Bytes> {
    (start <= end && end <= data.len()).then(|| data.slice(start..end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_entries_out_of_a_reply_in_place() {
        let reply: &[u8] = b"*1\r\n*2\r\n$13\r\nevr:{order.1}\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\ne\r\n$3\r\nabc\r\n*2\r\n$3\r\n1-1\r\n*4\r\n$1\r\nx\r\n$1\r\ny\r\n$1\r\ne\r\n$1\r\nd\r\n";
        let (frame, used) = decode_range(reply).expect("valid").expect("complete");
        assert_eq!(used, reply.len());
        let data = Bytes::copy_from_slice(reply);
        let streams = stream_entries(frame, &data);
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].0, "evr:{order.1}");
        assert_eq!(streams[0].1[0], (Bytes::from("1-0"), Bytes::from("abc")));
        assert_eq!(streams[0].1[1], (Bytes::from("1-1"), Bytes::from("d")));
        // A reply cut short is not a frame yet; a null reply (block timed out) is empty.
        assert!(decode_range(&reply[..reply.len() - 3])
            .expect("valid")
            .is_none());
        let (null, _) = decode_range(b"*-1\r\n").expect("valid").expect("complete");
        assert!(stream_entries(null, &Bytes::new()).is_empty());
    }

    #[test]
    fn server_errors_keep_their_code() {
        let err = server_error(Some(b"NOGROUP No such key 'x' or consumer group 'g'"));
        assert_eq!(err.code(), Some("NOGROUP"));
    }
}
