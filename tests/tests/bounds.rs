//! What a peer can make the server hold: each bound the network layer promises, pushed on by a
//! peer that sends for long, sends without authenticating, or never reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashstock_client::{ClientError, ClientTls, Connection};
use flashstock_engine::{BuyerId, Command, RequestId, Reserve, SkuId};
use flashstock_protocol::{
    ErrorCode, FrameEncoder, FrameError, Message, Refusal, Reply, Request, HELLO_BYTES_MAX,
    PROTOCOL_VERSION,
};
use flashstock_runtime::{Runtime, RuntimeConfig, SystemClock};
use flashstock_server::net::{self, NetLimits, Stopped, TransportLimits, HELLO_TIMEOUT_MS_DEFAULT};
use flashstock_tests::server::TestServer;
use flashstock_wal::MemWal;

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

fn request_id() -> RequestId {
    RequestId(u128::from(NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)))
}

fn reserve(buyer: u64, sku: u64) -> Request {
    Request::Apply(Command::Reserve(Reserve {
        request: request_id(),
        buyer: BuyerId(buyer),
        sku: SkuId(sku),
        qty: 1,
        ttl_ms: 60_000,
        order_ref: None,
    }))
}

/// A client keeps one stream for its connection's life: every frame it sends must be let go
/// of once answered, not kept until the stream ends (which it never does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_frames_are_not_held_for_the_streams_life() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let service = server.connect(&server.service_token).await;
    const FRAMES: u64 = 2_000;
    for n in 0..FRAMES {
        // Unknown SKU: nothing to remember, as in a long sold-out sale.
        let replies = service.call(vec![reserve(n, 1)]).await.unwrap();
        assert!(matches!(replies[..], [Reply::Outcome(_)]), "{replies:?}");
    }
    // Every frame was answered, so at most the last one may still be finishing.
    let held = server.stats.batches_held();
    assert!(held <= 1, "{held} request batches held after {FRAMES} answered frames");
    server.stop().await;
}

/// A raw QUIC connection to `server` that keeps itself alive, as an attacker's would, so only
/// the server's own rules can end it.
async fn raw_connection(server: &TestServer) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = server.tls().quinn_config();
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(500)));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    endpoint.connect(server.addr, "localhost").unwrap().await.unwrap()
}

/// The code the server closed `connection` with, waiting up to `within`.
async fn closed_within(connection: &quinn::Connection, within: Duration) -> Option<ErrorCode> {
    let reason = tokio::time::timeout(within, connection.closed()).await.ok()?;
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ErrorCode::from_u32(close.error_code.into_inner() as u32)
        }
        other => panic!("expected an application close, got {other}"),
    }
}

fn header(payload_bytes: u32) -> Vec<u8> {
    let mut bytes = b"FSTK".to_vec();
    bytes.extend_from_slice(&[PROTOCOL_VERSION, 0, 0, 0]);
    bytes.extend_from_slice(&payload_bytes.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes
}

/// A connection that opens a stream and never completes a Hello, kept alive by pings, is
/// closed `Unauthenticated` at the deadline; so is one that never even opens a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_hello_is_closed_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let silent = raw_connection(&server).await;
    let trickling = raw_connection(&server).await;
    let (mut send, _recv) = trickling.open_bi().await.unwrap();
    send.write_all(&header(100)[..10]).await.unwrap();
    let within = Duration::from_millis(HELLO_TIMEOUT_MS_DEFAULT + 3_000);
    assert_eq!(closed_within(&silent, within).await, Some(ErrorCode::Unauthenticated));
    assert_eq!(closed_within(&trickling, within).await, Some(ErrorCode::Unauthenticated));
    assert_eq!(server.stats.hello_timeouts(), 2);
    let service = server.connect(&server.service_token).await;
    tokio::time::sleep(Duration::from_millis(HELLO_TIMEOUT_MS_DEFAULT + 500)).await;
    let replies = service.call(vec![reserve(1, 1)]).await.unwrap();
    assert!(matches!(replies[..], [Reply::Outcome(_)]), "authenticated: past the deadline");
    server.stop().await;
}

/// Before `Welcome` a peer gets one stream and one Hello's worth of bytes on it, for the
/// Hello deadline: a header announcing more is refused at once, a second stream is never
/// granted, and a partial frame is dropped with its connection at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_peer_can_make_the_server_hold_one_hello() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let wait = Duration::from_millis(500);

    let big = raw_connection(&server).await;
    let (mut send, _recv) = big.open_bi().await.unwrap();
    send.write_all(&header(1_000_000)).await.unwrap();
    assert_eq!(closed_within(&big, wait * 4).await, Some(ErrorCode::FrameTooLarge));

    let filling = raw_connection(&server).await;
    let (mut send, _recv) = filling.open_bi().await.unwrap();
    send.write_all(&header(HELLO_BYTES_MAX)).await.unwrap();
    // All but the last byte of a Hello-sized frame: the most it can make the server hold.
    send.write_all(&vec![0u8; HELLO_BYTES_MAX as usize - 1]).await.unwrap();
    let second = async {
        let (mut send, _recv) = filling.open_bi().await.unwrap();
        send.write_all(b"FSTK").await.unwrap();
    };
    assert!(tokio::time::timeout(wait, second).await.is_err(), "no second stream before Welcome");
    let within = Duration::from_millis(HELLO_TIMEOUT_MS_DEFAULT + 3_000);
    assert_eq!(closed_within(&filling, within).await, Some(ErrorCode::Unauthenticated));
    server.stop().await;
}

/// A client that sends far more requests than it may have in flight and never reads a reply:
/// the server stops reading it once its in-flight budget is spent, and holds at most that
/// many requests' replies for it, while another client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let in_flight_max = NetLimits::default().in_flight_max as usize;
    let deaf = raw_connection(&server).await;
    let (mut send, _recv) = deaf.open_bi().await.unwrap();
    let mut encoder = FrameEncoder::new(1 << 20);
    let mut bytes = Vec::new();
    let hello =
        Message::Hello { token: Some(server.service_token.clone()), client_name: "deaf".into() };
    encoder.encode(1, &hello, &mut bytes).unwrap();
    // Queries of a SKU that exists answer with its whole view: the largest replies.
    let admin = server.connect(&server.admin_token).await;
    let stock = Command::SetStock { request: RequestId(u128::MAX), sku: SkuId(2), total: 5 };
    admin.call(vec![Request::Apply(stock)]).await.unwrap();
    let queries: Vec<Request> = (0..1_000).map(|_| Request::QuerySku(SkuId(2))).collect();
    for frame in 0..200u64 {
        encoder.encode(2 + frame, &Message::Requests(queries.clone()), &mut bytes).unwrap();
    }
    // 200,000 requests: the writes stall once the server stops reading.
    let writer = tokio::spawn(async move {
        let _ = send.write_all(&bytes).await;
        send
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unwritten = server.stats.requests_unwritten();
    assert!(
        unwritten <= in_flight_max,
        "{unwritten} requests held for a client that does not read (bound {in_flight_max})"
    );
    assert!(!writer.is_finished(), "the server must stop reading a client that does not read");
    let replies = admin.call(vec![Request::QuerySku(SkuId(2))]).await.unwrap();
    assert!(matches!(replies[..], [Reply::Sku(Some(_))]), "others are still served");
    writer.abort();
    server.stop().await;
}

/// Fail-stop: once the log fails, the server answers what it took (`Unavailable`: nothing of
/// it was made durable) and stops serving, instead of refusing everything for ever; its
/// supervisor restarts it into recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_sync_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let wal = MemWal::new();
    let config = RuntimeConfig { shard_count: 2, ..RuntimeConfig::default() };
    let runtime = Runtime::start(config, wal.clone(), Arc::new(SystemClock)).unwrap();
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start_on(runtime, dir.path(), addr, None).await;
    let admin = server.connect(&server.admin_token).await;
    let stock = |total| Command::SetStock { request: request_id(), sku: SkuId(3), total };
    admin.call(vec![Request::Apply(stock(10))]).await.unwrap();
    wal.fail_next_syncs(1);
    let replies = admin.call(vec![Request::Apply(stock(20))]).await.unwrap();
    assert_eq!(replies, vec![Reply::Refused(Refusal::Unavailable)]);
    let stopped = tokio::time::timeout(Duration::from_secs(20), server.stopped()).await;
    assert!(
        matches!(stopped, Ok(Stopped::WalFailed { .. })),
        "the server must stop once its log has failed: {stopped:?}"
    );
    assert!(admin.call(vec![Request::QuerySku(SkuId(3))]).await.is_err(), "no longer served");
}

/// Something posing as the server (it holds the certificate) answers the Hello with a frame
/// header announcing gigabytes: the client refuses it from the header, rather than buffering
/// whatever follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_an_oversized_frame_from_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let files = net::ensure_self_signed(dir.path()).unwrap();
    let config = net::server_config(&files, TransportLimits::default(), None).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let rogue = tokio::spawn(async move {
        let connection = endpoint.accept().await.unwrap().await.unwrap();
        let (mut send, _recv) = connection.accept_bi().await.unwrap();
        send.write_all(&header(u32::MAX - 1)).await.unwrap();
        let filler = vec![0u8; 64 << 10];
        // Keeps sending until the client goes away.
        while send.write_all(&filler).await.is_ok() {}
    });
    let tls = ClientTls::trust_pem_file(&files.cert_path).unwrap();
    let connecting = Connection::connect(addr, "localhost", &tls, Some("token"));
    let result = tokio::time::timeout(Duration::from_secs(10), connecting).await;
    let err = result.expect("refused at the header, not after buffering").unwrap_err();
    assert!(
        matches!(err, ClientError::Protocol(FrameError::FrameTooLarge { .. })),
        "expected FrameTooLarge, got {err}"
    );
    rogue.abort();
}

/// Connections are counted per source address as well as in all: past either limit a new
/// one is refused in its handshake, and once one ends its place is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::open(
        dir.path(),
        RuntimeConfig { shard_count: 2, ..RuntimeConfig::default() },
        Arc::new(SystemClock),
    )
    .unwrap();
    let limits =
        NetLimits { connections_per_address_max: 2, connections_max: 64, ..NetLimits::default() };
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start_limited(runtime, dir.path(), addr, None, limits).await;
    let first = server.connect(&server.service_token).await;
    let second = server.connect(&server.service_token).await;
    let third =
        Connection::connect(server.addr, "localhost", &server.tls(), Some(&server.service_token))
            .await;
    assert!(third.is_err(), "a third connection from one address must be refused");
    assert_eq!(server.stats.connections_refused(), 1);
    assert!(second.call(vec![reserve(1, 1)]).await.is_ok(), "the admitted ones are served");
    first.close();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again =
        Connection::connect(server.addr, "localhost", &server.tls(), Some(&server.service_token))
            .await;
    assert!(again.is_ok(), "a freed place is taken again: {again:?}");
    server.stop().await;
}

/// From half of `connections_max` on, a new connection first proves its address with a QUIC
/// Retry (transparent to a real client), and past the limit it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_server_validates_addresses_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { shard_count: 2, ..RuntimeConfig::default() };
    let runtime = Runtime::open(dir.path(), config, Arc::new(SystemClock)).unwrap();
    let limits = NetLimits { connections_max: 4, ..NetLimits::default() };
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start_limited(runtime, dir.path(), addr, None, limits).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(server.connect(&server.service_token).await);
    }
    let tls = server.tls();
    let fifth = Connection::connect(server.addr, "localhost", &tls, Some(&server.service_token));
    assert!(fifth.await.is_err(), "past connections_max a connection is refused");
    for connection in &open {
        assert!(connection.call(vec![reserve(2, 1)]).await.is_ok());
    }
    server.stop().await;
}
