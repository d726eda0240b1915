//! Frames on TCP: a little-endian u32 length, then a bincode body. One request at a time per
//! connection (the load driver opens many connections), the answer on the same connection.
//! Both prototypes speak the same client messages, so one driver measures both.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest frame either side reads: a raft append or a shipped batch of the biggest group
/// commit, with room. A peer naming more is cut off before anything is allocated.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// Reads one frame and decodes it.
pub async fn read<T: DeserializeOwned>(
    stream: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<T> {
    let len = stream.read_u32_le().await? as usize;
    if len > FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    bincode::deserialize(&body).map_err(std::io::Error::other)
}

/// Encodes one frame and writes it.
pub async fn write<T: Serialize>(
    stream: &mut (impl AsyncWrite + Unpin),
    value: &T,
) -> std::io::Result<()> {
    let body = bincode::serialize(value).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

/// A connection to `addr` for one call at a time: connected on first use, dropped after any
/// error or timeout (a call cut short leaves the stream mid-frame), reconnected on the next.
pub struct Link {
    addr: String,
    stream: Option<TcpStream>,
}

impl Link {
    pub fn new(addr: impl Into<String>) -> Link {
        Link { addr: addr.into(), stream: None }
    }

    /// Sends `request` and reads its answer, all within `ttl` (`TimedOut` past it).
    pub async fn call<Req: Serialize, Rep: DeserializeOwned>(
        &mut self,
        request: &Req,
        ttl: std::time::Duration,
    ) -> std::io::Result<Rep> {
        let attempt = async {
            if self.stream.is_none() {
                let stream = TcpStream::connect(&self.addr).await?;
                stream.set_nodelay(true)?;
                self.stream = Some(stream);
            }
            let stream = self.stream.as_mut().expect("connected above");
            write(stream, request).await?;
            read(stream).await
        };
        let reply = match tokio::time::timeout(ttl, attempt).await {
            Ok(reply) => reply,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "call timed out")),
        };
        if reply.is_err() {
            self.stream = None;
        }
        reply
    }
}

/// What a load driver asks a node.
#[derive(Debug, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Creates (or resets) SKUs `0..skus` with `total` units each.
    Stock { request: u64, skus: u64, total: u64 },
    /// One checkout per entry: reserve one unit of the SKU, then confirm it (two records).
    Checkout { requests: Vec<(u64, u64)> },
    /// The node's committed state: units sold over all SKUs and the shard's digest.
    Audit,
}

/// A node's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum ClientReply {
    /// Every checkout of the request was decided and is durable on a quorum: how many sold.
    Done { sold: u32 },
    /// This node does not lead; the leader it knows, if any (an index into the node list).
    NotLeader { leader: Option<u64> },
    /// The write was not committed (leadership lost while it was in flight); retry it.
    Failed { why: String },
    /// The answer to `Audit`.
    Audit { sold: u64, digest: u64, applied: u64, leading: bool },
}

/// Serves one connection: each frame decoded as `Req`, answered by `handle`.
pub async fn serve<Req, Rep, F, Fut>(mut stream: TcpStream, handle: F)
where
    Req: DeserializeOwned,
    Rep: Serialize,
    F: Fn(Req) -> Fut,
    Fut: std::future::Future<Output = Rep>,
{
    let _ = stream.set_nodelay(true);
    while let Ok(request) = read::<Req>(&mut stream).await {
        let reply = handle(request).await;
        if write(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}
