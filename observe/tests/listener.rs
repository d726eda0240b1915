//! What an unauthenticated peer can make the observation listener hold: one request head of
//! at most `head_bytes_max`, for at most `connection_timeout_ms`, on at most
//! `connections_max` connections; and the others are served meanwhile.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use flashstock_observe::{fetch, Health, HttpLimits, Observed};

async fn listener(limits: HttpLimits) -> std::net::SocketAddr {
    let listener = flashstock_observe::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let observed =
        Observed { metrics: flashstock_observe::install().unwrap(), health: Health::new() };
    tokio::spawn(flashstock_observe::serve(listener, observed, limits, std::future::pending()));
    addr
}

/// Reads until the peer closes (or 5 s pass): what the listener sent.
fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_held_to_one_bounded_head_in_bounded_time_on_bounded_connections() {
    let limits =
        HttpLimits { connections_max: 2, head_bytes_max: 8_192, connection_timeout_ms: 300 };
    let addr = listener(limits).await;
    let blocking = tokio::task::spawn_blocking(move || {
        // A head past the limit is refused, not buffered.
        let mut huge = TcpStream::connect(addr).unwrap();
        let padding = "x".repeat(64 << 10);
        let _ = write!(huge, "GET /livez HTTP/1.1\r\nX-Pad: {padding}\r\n\r\n");
        let answer = String::from_utf8_lossy(&read_all(&mut huge)).to_string();
        assert!(answer.starts_with("HTTP/1.1 431"), "an oversized head is refused: {answer}");

        // Two silent peers fill the listener; a third is closed at once, unanswered.
        let started = Instant::now();
        let mut silent: Vec<TcpStream> =
            (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(50));
        let mut third = TcpStream::connect(addr).unwrap();
        let _ = third.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(read_all(&mut third).is_empty(), "past connections_max: closed unanswered");
        // The silent ones are cut at the deadline, and their places are free again.
        for peer in &mut silent {
            read_all(peer);
        }
        let held = started.elapsed();
        assert!(held < Duration::from_secs(2), "silent peers held {held:?}");
        let live = fetch(addr, "/livez", Duration::from_secs(2)).unwrap();
        assert_eq!(live.status, 200);
    });
    blocking.await.unwrap();
}
