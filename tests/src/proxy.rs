//! A UDP forwarder between a QUIC client and server that can black-hole either direction:
//! how the tests lose replies and drop connections for real.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

/// A running forwarder. Clients connect to `addr`.
#[derive(Debug)]
pub struct UdpProxy {
    /// Where clients send.
    pub addr: SocketAddr,
    /// Drop packets from the server to clients.
    pub drop_to_client: Arc<AtomicBool>,
    /// Drop packets from clients to the server.
    pub drop_to_server: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpProxy {
    /// Forwards between clients and `server`.
    pub async fn start(server: SocketAddr) -> UdpProxy {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let drop_to_client = Arc::new(AtomicBool::new(false));
        let drop_to_server = Arc::new(AtomicBool::new(false));
        let (to_client, to_server) = (drop_to_client.clone(), drop_to_server.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let (mut from_client, mut from_server) = (vec![0u8; 65_536], vec![0u8; 65_536]);
            loop {
                tokio::select! {
                    Ok((len, peer)) = front.recv_from(&mut from_client) => {
                        // The latest client wins: a reconnecting client gets a new port.
                        client = Some(peer);
                        if !to_server.load(Ordering::Acquire) {
                            let _ = back.send(&from_client[..len]).await;
                        }
                    }
                    Ok(len) = back.recv(&mut from_server) => {
                        if let (Some(peer), false) = (client, to_client.load(Ordering::Acquire)) {
                            let _ = front.send_to(&from_server[..len], peer).await;
                        }
                    }
                }
            }
        });
        UdpProxy { addr, drop_to_client, drop_to_server, task }
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP forwarder that can cut every connection through it and refuse new ones, standing in
/// for a database server that goes away and comes back.
#[derive(Debug)]
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Forwards connections to `server`.
    pub async fn start(server: SocketAddr) -> TcpProxy {
        TcpProxy::start_with_delay(server, Duration::ZERO).await
    }

    /// Forwards connections to `server`, holding every chunk `delay` before passing it on in
    /// either direction: a slow network to a slow database.
    pub async fn start_with_delay(server: SocketAddr, delay: Duration) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let (accepting, cut_signal) = (open.clone(), cuts.subscribe());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(Ordering::Acquire) {
                    continue; // dropped at once: the "server" is down
                }
                let mut cut = cut_signal.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(server).await else {
                        return;
                    };
                    let (client_read, client_write) = client.split();
                    let (upstream_read, upstream_write) = upstream.split();
                    tokio::select! {
                        _ = pass(client_read, upstream_write, delay) => {}
                        _ = pass(upstream_read, client_write, delay) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        TcpProxy { addr, open, cuts, task }
    }

    /// Drops every connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.cuts.send_modify(|count| *count += 1);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

/// Copies `from` to `to`, each chunk after `delay`.
async fn pass(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else { return };
        if read == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
