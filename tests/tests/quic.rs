//! The server over real loopback QUIC: the request lifecycle, a race over several connections,
//! and every kind of bad input, each followed by a check that a well-behaved client on another
//! connection is still served and that no stock changed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashstock_client::{ClientError, Connection};
use flashstock_engine::{
    BuyerId, Command, Outcome, RequestId, ReservationState, Reserve, SkuId, SkuView,
};
use flashstock_protocol::{ErrorCode, Refusal, Reply, Request, Role, ALPN};
use flashstock_tests::server::TestServer;

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

fn request() -> RequestId {
    RequestId(u128::from(NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)))
}

async fn one(connection: &Connection, request: Request) -> Reply {
    let mut replies = connection.call(vec![request]).await.unwrap();
    assert_eq!(replies.len(), 1);
    replies.remove(0)
}

async fn apply(connection: &Connection, command: Command) -> Outcome {
    match one(connection, Request::Apply(command)).await {
        Reply::Outcome(outcome) => outcome,
        other => panic!("expected an outcome, got {other:?}"),
    }
}

async fn sku(connection: &Connection, sku: u64) -> SkuView {
    match one(connection, Request::QuerySku(SkuId(sku))).await {
        Reply::Sku(Some(view)) => *view,
        other => panic!("expected a SKU, got {other:?}"),
    }
}

fn reserve(buyer: u64, sku: u64, ttl_ms: u64) -> Command {
    Command::Reserve(Reserve {
        request: request(),
        buyer: BuyerId(buyer),
        sku: SkuId(sku),
        qty: 1,
        ttl_ms,
        order_ref: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_lifecycle_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let admin = server.connect(&server.admin_token).await;
    let service = server.connect(&server.service_token).await;
    assert_eq!((admin.role(), service.role()), (Role::Admin, Role::Service));
    let stock = Command::SetStock { request: request(), sku: SkuId(1), total: 10 };
    assert_eq!(apply(&admin, stock).await, Outcome::StockChanged { total: 10, available: 10 });

    let Outcome::Reserved { reservation: paid, .. } = apply(&service, reserve(1, 1, 60_000)).await
    else {
        panic!("a reservation")
    };
    let Outcome::Reserved { reservation: dropped, .. } =
        apply(&service, reserve(2, 1, 60_000)).await
    else {
        panic!("a reservation")
    };
    let Outcome::Reserved { reservation: lapsing, .. } = apply(&service, reserve(3, 1, 50)).await
    else {
        panic!("a reservation")
    };
    assert_eq!(
        apply(
            &service,
            Command::Confirm { request: request(), reservation: paid, order_ref: None }
        )
        .await,
        Outcome::Confirmed
    );
    assert_eq!(
        apply(&service, Command::Cancel { request: request(), reservation: dropped }).await,
        Outcome::Cancelled
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Reply::Reservation(Some(view)) = one(&service, Request::QueryReservation(lapsing)).await
    else {
        panic!("a reservation view")
    };
    assert_eq!(view.state, ReservationState::Expired, "the hold lapsed on its own");
    let view = sku(&service, 1).await;
    assert_eq!((view.total, view.available, view.reserved, view.sold), (10, 9, 0, 1));

    // A batch: replies come back one per request, in order.
    let batch = vec![
        Request::QuerySku(SkuId(1)),
        Request::QuerySku(SkuId(99)),
        Request::Apply(reserve(4, 1, 60_000)),
    ];
    let replies = service.call(batch).await.unwrap();
    assert!(matches!(replies[0], Reply::Sku(Some(_))));
    assert_eq!(replies[1], Reply::Sku(None));
    assert!(matches!(replies[2], Reply::Outcome(Outcome::Reserved { .. })));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_over_eight_connections_race_for_a_hundred_units() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let admin = server.connect(&server.admin_token).await;
    apply(&admin, Command::SetStock { request: request(), sku: SkuId(5), total: 100 }).await;
    let mut connections = Vec::new();
    for _ in 0..8 {
        connections.push(Arc::new(server.connect(&server.service_token).await));
    }
    let tasks: Vec<_> = (0..1000u64)
        .map(|buyer| {
            let connection = connections[buyer as usize % 8].clone();
            tokio::spawn(async move { apply(&connection, reserve(buyer, 5, 60_000)).await })
        })
        .collect();
    let mut reserved = 0;
    for task in tasks {
        match task.await.unwrap() {
            Outcome::Reserved { .. } => reserved += 1,
            Outcome::SoldOut { available: 0 } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reserved, 100);
    let view = sku(&admin, 5).await;
    assert_eq!((view.available, view.reserved), (0, 100));
    server.stop().await;
}

/// Starts a server with stock on SKU 7 and a well-behaved admin connection.
async fn server_with_stock() -> (tempfile::TempDir, TestServer, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let admin = server.connect(&server.admin_token).await;
    apply(&admin, Command::SetStock { request: request(), sku: SkuId(7), total: 50 }).await;
    (dir, server, admin)
}

/// After bad input elsewhere: the good connection is still served and stock is unchanged.
async fn still_served_and_unchanged(good: &Connection) {
    let view = sku(good, 7).await;
    assert_eq!((view.total, view.available, view.reserved, view.sold), (50, 50, 0, 0));
}

/// A raw stream on a raw connection that has authenticated (or not), for writing bad bytes.
async fn raw_stream(
    server: &TestServer,
    hello: bool,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(server.tls().quinn_config());
    let connection = endpoint.connect(server.addr, "localhost").unwrap().await.unwrap();
    let (mut send, recv) = connection.open_bi().await.unwrap();
    if hello {
        let mut frame = Vec::new();
        let hello = flashstock_protocol::Message::Hello {
            token: Some(server.service_token.clone()),
            client_name: "raw".into(),
        };
        flashstock_protocol::FrameEncoder::new(1 << 20).encode(1, &hello, &mut frame).unwrap();
        send.write_all(&frame).await.unwrap();
    }
    (connection, send, recv)
}

async fn closed_with(connection: &quinn::Connection) -> ErrorCode {
    let reason = tokio::time::timeout(Duration::from_secs(10), connection.closed()).await.unwrap();
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ErrorCode::from_u32(close.error_code.into_inner() as u32).expect("one of our codes")
        }
        other => panic!("expected an application close, got {other}"),
    }
}

fn header(version: u8, payload_bytes: u32) -> Vec<u8> {
    let mut bytes = b"FSTK".to_vec();
    bytes.extend_from_slice(&[version, 0, 0, 0]);
    bytes.extend_from_slice(&payload_bytes.to_le_bytes());
    bytes.extend_from_slice(&9u64.to_le_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_the_offending_connection() {
    let (_dir, server, admin) = server_with_stock().await;

    // Garbage bytes after the handshake.
    let (connection, mut send, _recv) = raw_stream(&server, true).await;
    send.write_all(b"GET / HTTP/1.1\r\nHost: flashstock\r\n\r\n").await.unwrap();
    assert_eq!(closed_with(&connection).await, ErrorCode::MalformedFrame);
    still_served_and_unchanged(&admin).await;

    // An unknown protocol version: answered with the supported ones.
    let (connection, mut send, mut recv) = raw_stream(&server, false).await;
    send.write_all(&header(flashstock_protocol::PROTOCOL_VERSION + 1, 0)).await.unwrap();
    let answer = recv.read_to_end(1 << 16).await.unwrap();
    let mut decoder = flashstock_protocol::FrameDecoder::new(1 << 20);
    decoder.push(&answer);
    let flashstock_protocol::Decoded::Frame(frame) = decoder.decode().unwrap() else {
        panic!("a frame")
    };
    let flashstock_protocol::Message::Error(error) = frame.message else {
        panic!("an error frame")
    };
    assert_eq!(
        (error.code, error.supported_versions),
        (ErrorCode::UnsupportedVersion, vec![flashstock_protocol::PROTOCOL_VERSION])
    );
    assert_eq!(closed_with(&connection).await, ErrorCode::UnsupportedVersion);
    still_served_and_unchanged(&admin).await;

    // An oversized length.
    let (connection, mut send, _recv) = raw_stream(&server, true).await;
    send.write_all(&header(flashstock_protocol::PROTOCOL_VERSION, u32::MAX)).await.unwrap();
    assert_eq!(closed_with(&connection).await, ErrorCode::FrameTooLarge);
    still_served_and_unchanged(&admin).await;

    // A well-delimited frame whose payload fails rkyv validation.
    let (connection, mut send, _recv) = raw_stream(&server, true).await;
    let mut frame = header(flashstock_protocol::PROTOCOL_VERSION, 64);
    frame.extend_from_slice(&[0xff; 64]);
    send.write_all(&frame).await.unwrap();
    assert_eq!(closed_with(&connection).await, ErrorCode::MalformedFrame);
    still_served_and_unchanged(&admin).await;

    // A truncated frame, then the client goes away.
    let (connection, mut send, _recv) = raw_stream(&server, true).await;
    send.write_all(&header(flashstock_protocol::PROTOCOL_VERSION, 1000)[..15]).await.unwrap();
    send.finish().unwrap();
    connection.close(0u32.into(), b"gone");
    still_served_and_unchanged(&admin).await;

    // Requests before any Hello.
    let (connection, mut send, _recv) = raw_stream(&server, false).await;
    let mut frame = Vec::new();
    let requests =
        flashstock_protocol::Message::Requests(vec![Request::Apply(reserve(1, 7, 1_000))]);
    flashstock_protocol::FrameEncoder::new(1 << 20).encode(2, &requests, &mut frame).unwrap();
    send.write_all(&frame).await.unwrap();
    assert_eq!(closed_with(&connection).await, ErrorCode::Unauthenticated);
    still_served_and_unchanged(&admin).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_roles_and_alpn_are_refused() {
    let (_dir, server, admin) = server_with_stock().await;
    let tls = server.tls();

    for token in [None, Some("not-a-token")] {
        let err = Connection::connect(server.addr, "localhost", &tls, token).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Rejected { code: ErrorCode::Unauthenticated, .. }),
            "{err}"
        );
    }
    still_served_and_unchanged(&admin).await;

    let service = server.connect(&server.service_token).await;
    let admin_only = Command::SetStock { request: request(), sku: SkuId(7), total: 1_000 };
    assert_eq!(
        one(&service, Request::Apply(admin_only)).await,
        Reply::Refused(Refusal::PermissionDenied)
    );
    still_served_and_unchanged(&admin).await;

    // A client offering another ALPN never completes the handshake.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let cert = std::fs::read(&server.cert).unwrap();
    use rustls::pki_types::pem::PemObject;
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(&cert) {
        roots.add(der.unwrap()).unwrap();
    }
    let mut wrong = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    wrong.alpn_protocols = vec![b"h3".to_vec()];
    assert_ne!(ALPN, b"h3");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(wrong).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let handshake = endpoint.connect(server.addr, "localhost").unwrap().await;
    assert!(handshake.is_err(), "a wrong ALPN must fail the handshake");
    still_served_and_unchanged(&admin).await;
    server.stop().await;
}

/// A cart whose archived line count says 200 (bytecheck checks an archive's structure, not
/// that count): answered `InvalidCart`, the server and its other callers unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_with_a_forged_line_count_is_refused_over_the_wire() {
    use flashstock_engine::{BuyerId, Lines, Outcome, ReserveCart, CART_LINES_MAX};
    use flashstock_protocol::{Decoded, FrameDecoder, FrameEncoder, Message, Reply};
    let (_dir, server, admin) = server_with_stock().await;
    let (connection, mut send, mut recv) = raw_stream(&server, true).await;
    let marker = 0x1122_3344_5566_7788u64;
    let lines = Lines::numbered([(SkuId(marker), 1)]).unwrap();
    let cart = ReserveCart {
        request: request(),
        buyer: BuyerId(1),
        ttl_ms: 1_000,
        order_ref: None,
        lines,
    };
    let requests = Message::Requests(vec![Request::ReserveCart(Box::new(cart))]);
    let mut frame = Vec::new();
    FrameEncoder::new(1 << 20).encode(2, &requests, &mut frame).unwrap();
    // The archived lines: a count byte, then each line's index byte and SKU (little-endian).
    let sku_at = frame.windows(8).position(|w| w == marker.to_le_bytes()).expect("the SKU");
    assert_eq!((frame[sku_at - 2], frame[sku_at - 1]), (1, 0), "count 1, then line 0");
    frame[sku_at - 2] = 200;
    send.write_all(&frame).await.unwrap();
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut buf = vec![0u8; 1 << 16];
    let reply = loop {
        match decoder.decode().unwrap() {
            Decoded::Frame(frame) => match frame.message {
                Message::Replies(mut replies) => break replies.remove(0),
                Message::Welcome { .. } => continue,
                other => panic!("unexpected {other:?}"),
            },
            _ => {
                let read = tokio::time::timeout(Duration::from_secs(5), recv.read(&mut buf));
                let n = read.await.unwrap().unwrap().expect("the stream stays open");
                decoder.push(&buf[..n]);
            }
        }
    };
    let lines_max = CART_LINES_MAX as u32;
    assert_eq!(reply, Reply::Outcome(Outcome::InvalidCart { lines_max }));
    connection.close(0u32.into(), b"done");
    still_served_and_unchanged(&admin).await;
    server.stop().await;
}
