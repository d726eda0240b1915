//! The client library against a real server: batching, retries that keep the request id
//! across a dropped connection, reconnecting after a server restart, and the circuit breaker.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flashstock_client::{Client, ClientConfig, ClientError};
use flashstock_engine::{BuyerId, Command, Outcome, ReservationState, Reserve, SkuId};
use flashstock_tests::proxy::UdpProxy;
use flashstock_tests::server::TestServer;

fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn admin_client(server: &TestServer) -> Client {
    let config =
        ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.admin_token));
    Client::connect(config).await.unwrap()
}

async fn counts(client: &Client, sku: u64) -> (u64, u64, u64, u64) {
    let view = client.query_sku(SkuId(sku)).await.unwrap().expect("a known SKU");
    (view.total, view.available, view.reserved, view.sold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_confirm_cancel_and_a_batch_through_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), any_port()).await;
    let admin = admin_client(&server).await;
    admin.set_stock(SkuId(1), 1_000).await.unwrap();
    let mut config =
        ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.service_token));
    config.connections = 2;
    let client = Client::connect(config).await.unwrap();

    let Outcome::Reserved { reservation, .. } =
        client.reserve(BuyerId(1), SkuId(1), 3, 60_000).await.unwrap()
    else {
        panic!("a reservation")
    };
    assert_eq!(client.confirm(reservation).await.unwrap(), Outcome::Confirmed);
    assert_eq!(client.confirm(reservation).await.unwrap(), Outcome::AlreadyConfirmed);
    let Outcome::Reserved { reservation: dropped, .. } =
        client.reserve(BuyerId(2), SkuId(1), 2, 60_000).await.unwrap()
    else {
        panic!("a reservation")
    };
    assert_eq!(client.cancel(dropped).await.unwrap(), Outcome::Cancelled);
    let view = client.query_reservation(reservation).await.unwrap().unwrap();
    assert_eq!(view.state, ReservationState::Confirmed);

    let outcomes =
        client.reserve_many((0..500).map(|b| (BuyerId(100 + b), SkuId(1), 1, 60_000))).await;
    assert!(outcomes.iter().all(|o| matches!(o, Ok(Outcome::Reserved { .. }))));
    assert_eq!(counts(&client, 1).await, (1_000, 497, 500, 3));

    let err = client.set_stock(SkuId(1), 5).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "a service may not set stock: {err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_across_a_dropped_connection_keeps_its_request_id_and_has_one_effect() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), any_port()).await;
    let admin = admin_client(&server).await;
    admin.set_stock(SkuId(20), 10).await.unwrap();
    let proxy = UdpProxy::start(server.addr).await;
    let mut config =
        ClientConfig::new(proxy.addr, "localhost", server.tls(), Some(&server.service_token));
    config.attempt_timeout = Duration::from_millis(300);
    config.call_timeout = Duration::from_secs(20);
    config.retries_max = 30;
    config.retry_backoff = Duration::from_millis(50);
    config.breaker_failures_max = 100;
    let client = Client::connect(config).await.unwrap();

    // The request reaches the server and is applied; its reply is lost on the way back.
    proxy.drop_to_client.store(true, Ordering::Release);
    let reserve = Command::Reserve(Reserve {
        request: client.request_id(),
        buyer: BuyerId(7),
        sku: SkuId(20),
        qty: 2,
        ttl_ms: 600_000,
        order_ref: None,
    });
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.apply(reserve).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(counts(&admin, 20).await, (10, 8, 2, 0), "applied once, reply lost");
    proxy.drop_to_client.store(false, Ordering::Release);

    // The client gave up on that connection, reconnected and re-sent the same request id:
    // it gets the first answer, and nothing happens twice.
    let Outcome::Reserved { reservation, .. } = call.await.unwrap().unwrap() else {
        panic!("a reservation")
    };
    assert_eq!(counts(&admin, 20).await, (10, 8, 2, 0), "one effect");
    let view = admin.query_reservation(reservation).await.unwrap().unwrap();
    assert_eq!((view.qty, view.state), (2, ReservationState::Held));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_a_server_restart_and_acknowledged_state_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), any_port()).await;
    let addr = server.addr;
    let admin = admin_client(&server).await;
    admin.set_stock(SkuId(30), 5).await.unwrap();
    let config = ClientConfig::new(addr, "localhost", server.tls(), Some(&server.service_token));
    let client = Client::connect(config).await.unwrap();
    let Outcome::Reserved { reservation, .. } =
        client.reserve(BuyerId(1), SkuId(30), 1, 600_000).await.unwrap()
    else {
        panic!("a reservation")
    };
    assert_eq!(client.confirm(reservation).await.unwrap(), Outcome::Confirmed);

    server.stop().await;
    let server = TestServer::start_at(dir.path(), addr).await;

    let view = client.query_reservation(reservation).await.unwrap().expect("it survived");
    assert_eq!(view.state, ReservationState::Confirmed);
    assert!(matches!(
        client.reserve(BuyerId(2), SkuId(30), 1, 600_000).await.unwrap(),
        Outcome::Reserved { .. }
    ));
    assert_eq!(counts(&client, 30).await, (5, 3, 1, 1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_when_the_server_is_down_and_calls_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), any_port()).await;
    let mut config =
        ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.service_token));
    config.attempt_timeout = Duration::from_millis(200);
    config.call_timeout = Duration::from_millis(500);
    config.retries_max = 0;
    config.breaker_failures_max = 3;
    config.breaker_open_for = Duration::from_secs(60);
    let client = Client::connect(config).await.unwrap();
    server.stop().await;

    for _ in 0..3 {
        let err = client.query_sku(SkuId(1)).await.unwrap_err();
        assert!(err.is_transport(), "{err}");
    }
    let started = Instant::now();
    let err = client.query_sku(SkuId(1)).await.unwrap_err();
    assert!(matches!(err, ClientError::CircuitOpen { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(100), "fails fast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_replies_are_lost_times_out_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), any_port()).await;
    let proxy = UdpProxy::start(server.addr).await;
    let mut config =
        ClientConfig::new(proxy.addr, "localhost", server.tls(), Some(&server.service_token));
    config.attempt_timeout = Duration::from_millis(300);
    config.call_timeout = Duration::from_millis(300);
    config.retries_max = 0;
    let client = Client::connect(config).await.unwrap();
    assert!(client.query_sku(SkuId(1)).await.unwrap().is_none(), "served through the proxy");

    proxy.drop_to_client.store(true, Ordering::Release);
    let started = Instant::now();
    // Two calls in one batch: the batch waits no longer than their deadline.
    let both = async { tokio::join!(client.query_sku(SkuId(1)), client.query_sku(SkuId(2))) };
    let (first, second) =
        tokio::time::timeout(Duration::from_secs(5), both).await.expect("calls gave up by then");
    let waited = started.elapsed();
    for err in [first.unwrap_err(), second.unwrap_err()] {
        assert!(matches!(err, ClientError::Timeout { deadline_ms: 300 }), "{err}");
    }
    assert!(waited >= Duration::from_millis(250), "gave up early: {waited:?}");
    assert!(waited < Duration::from_secs(2), "waited past the deadline: {waited:?}");

    // The connection that lost them is not trusted again: the next call reconnects.
    proxy.drop_to_client.store(false, Ordering::Release);
    assert!(client.query_sku(SkuId(1)).await.unwrap().is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_outlives_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), any_port()).await;
    let connection = server.connect(&server.service_token).await;
    let query = || vec![flashstock_protocol::Request::QuerySku(SkuId(1))];
    connection.call(query()).await.unwrap();
    // Nothing to send for longer than the server's idle timeout: the client's pings keep the
    // connection, and the same connection (no reconnect) still answers.
    let idle = Duration::from_millis(flashstock_tests::server::IDLE_TIMEOUT_MS + 2_000);
    tokio::time::sleep(idle).await;
    connection.call(query()).await.expect("the connection survived its quiet period");
    server.stop().await;
}

/// An admin pages through every SKU in id order, whichever shard holds each, with no SKU
/// missed or repeated at page boundaries; a service is refused, typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_pages_through_every_sku_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), any_port()).await;
    let admin = admin_client(&server).await;
    // Ids spread over both shards, not in order of creation; and the highest ten all on one
    // shard, so that the last pages come from one shard alone.
    let mut ids: Vec<u64> = (0..13u64).map(|i| (i * 7_919) % 1_000 + 1).collect();
    let map = flashstock_engine::ShardMap::new(2);
    let one_shard = |id: &u64| map.shard_of_sku(SkuId(*id)) == map.shard_of_sku(SkuId(5_000));
    ids.extend((5_000..).filter(one_shard).take(10));
    for &id in &ids {
        admin.set_stock(SkuId(id), id).await.unwrap();
    }
    let mut expected = ids.clone();
    expected.sort_unstable();

    // Pages of one end where only one shard has SKUs left: it alone says more may follow.
    for limit in [4, 1] {
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let (page, next_after) = admin.list_skus_page(after, limit).await.unwrap();
            assert!(page.len() <= limit as usize, "a page holds at most its limit");
            seen.extend(page.iter().map(|view| (view.sku.0, view.total)));
            pages += 1;
            match next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let seen_ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
        assert_eq!(seen_ids, expected, "every SKU once, in id order (pages of {limit})");
        assert!(seen.iter().all(|(id, total)| id == total), "each with its own counts");
        let full_pages = 23u32.div_ceil(limit);
        assert!((full_pages..=full_pages + 1).contains(&pages), "{pages} pages of {limit}");
    }
    assert_eq!(admin.list_skus().await.unwrap().len(), 23);

    let config =
        ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.service_token));
    let service = Client::connect(config).await.unwrap();
    let refused = service.list_skus_page(None, 10).await.unwrap_err();
    assert!(
        matches!(
            refused,
            ClientError::Refused { refusal: flashstock_protocol::Refusal::PermissionDenied }
        ),
        "{refused}"
    );
    server.stop().await;
}

fn reserved(outcome: &Result<Outcome, ClientError>) -> bool {
    matches!(outcome, Ok(Outcome::Reserved { .. }))
}

fn rate_limited(outcome: &Result<Outcome, ClientError>) -> bool {
    use flashstock_protocol::Refusal;
    matches!(
        outcome,
        Err(ClientError::Refused { refusal: Refusal::RateLimited { retry_after_ms } })
            if *retry_after_ms > 0 && *retry_after_ms <= 1_000
    )
}

/// A bot hammering a hot SKU through its credential, under buyer ids it invents, is held to
/// the credential's rate; a buyer is held to its own; other callers are not crowded out. The
/// limits are an admin's to set, and survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_bots_to_their_budget_and_survive_a_restart() {
    use flashstock_protocol::{RateLimit, Refusal};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), any_port()).await;
    let admin = admin_client(&server).await;
    admin.set_stock(SkuId(1), 100_000).await.unwrap();
    admin.set_stock(SkuId(2), 100_000).await.unwrap();
    let config =
        ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.service_token));
    let bot = Client::connect(config.clone()).await.unwrap();
    let refused = bot.set_rate_limit(None, RateLimit::default()).await.unwrap_err();
    assert!(matches!(refused, ClientError::Refused { refusal: Refusal::PermissionDenied }));
    let zero = RateLimit { per_buyer_per_s: Some(0), per_credential_per_s: None };
    assert!(matches!(admin.set_rate_limit(None, zero).await, Err(ClientError::Invalid(_))));

    let hot = RateLimit { per_buyer_per_s: Some(2), per_credential_per_s: Some(50) };
    let entries = admin.set_rate_limit(Some(SkuId(1)), hot).await.unwrap();
    assert_eq!(entries.len(), 2, "the global entry and SKU 1's");

    // 500 attempts at once under 500 invented buyers: about the credential's 50 get through.
    let attempts = (0..500u64).map(|b| (BuyerId(1_000 + b), SkuId(1), 1, 60_000));
    let outcomes = bot.reserve_many(attempts).await;
    let through = outcomes.iter().filter(|o| reserved(o)).count();
    assert!((50..=60).contains(&through), "{through} of 500 got through");
    assert_eq!(outcomes.iter().filter(|o| rate_limited(o)).count(), 500 - through);

    // Another credential is not crowded out; one buyer gets its 2, not a third. The three
    // calls are concurrent (two frames may race to the wire), so which one is refused is not
    // fixed: CI once saw the third reserved and an earlier one refused.
    let one_buyer: Vec<_> = (0..3).map(|_| (BuyerId(7), SkuId(1), 1, 60_000)).collect();
    let outcomes = admin.reserve_many(one_buyer).await;
    assert_eq!(outcomes.iter().filter(|o| reserved(o)).count(), 2, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| rate_limited(o)).count(), 1, "{outcomes:?}");
    // A SKU without limits of its own follows the global ones: none.
    let other = (0..200u64).map(|b| (BuyerId(b), SkuId(2), 1, 60_000));
    assert!(bot.reserve_many(other).await.iter().all(reserved));

    server.stop().await;
    let server = TestServer::start_at(dir.path(), any_port()).await;
    let admin = admin_client(&server).await;
    let entries = admin.list_rate_limits().await.unwrap();
    assert_eq!(entries[1].sku, Some(SkuId(1)));
    assert_eq!(entries[1].limit, hot, "stored in the log's metadata");
    server.stop().await;
}

/// A client started while the server cannot answer a handshake in time (a busy machine, a
/// restart) keeps trying within its call deadline instead of failing at the first 250 ms
/// handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rides_out_a_server_that_is_slow_to_answer_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), any_port()).await;
    let proxy = UdpProxy::start(server.addr).await;
    proxy.drop_to_client.store(true, Ordering::Release);
    let restore = proxy.drop_to_client.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        restore.store(false, Ordering::Release);
    });
    let config =
        ClientConfig::new(proxy.addr, "localhost", server.tls(), Some(&server.admin_token));
    let started = Instant::now();
    let client = Client::connect(config).await.expect("connected once the server answers");
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
    client.set_stock(SkuId(1), 1).await.unwrap();

    // Wrong credentials are still refused at once, not retried until the deadline.
    let config = ClientConfig::new(server.addr, "localhost", server.tls(), Some("wrong"));
    let started = Instant::now();
    assert!(Client::connect(config).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_over_the_wire_is_held_whole_refused_whole_and_confirmed_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), any_port()).await;
    let admin = admin_client(&server).await;
    for sku in 1..=3 {
        admin.set_stock(SkuId(sku), 10).await.unwrap();
    }
    let config =
        ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.service_token));
    let client = Client::connect(config).await.unwrap();
    let lines = [(SkuId(1), 2), (SkuId(2), 3), (SkuId(3), 1)];
    let Outcome::Reserved { reservation, .. } =
        client.reserve_cart(BuyerId(7), &lines, 60_000).await.unwrap()
    else {
        panic!("a held cart")
    };
    let view = client.query_cart(reservation).await.unwrap().expect("a known cart");
    assert_eq!((view.state, view.lines.len(), view.buyer), (ReservationState::Held, 3, BuyerId(7)));
    // One line short of stock refuses the whole cart, and names the line.
    let refused = client.reserve_cart(BuyerId(8), &[(SkuId(3), 1), (SkuId(2), 8)], 60_000).await;
    let refusal = flashstock_engine::LineRefusal::SoldOut;
    assert_eq!(refused.unwrap(), Outcome::CartRefused { line: 1, refusal, value: 7 });
    assert_eq!(client.confirm(reservation).await.unwrap(), Outcome::Confirmed);
    for _ in 0..200 {
        if counts(&client, 2).await == (10, 7, 0, 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        (counts(&client, 1).await, counts(&client, 2).await, counts(&client, 3).await),
        ((10, 8, 0, 2), (10, 7, 0, 3), (10, 9, 0, 1))
    );
    assert_eq!(client.cancel(reservation).await.unwrap(), Outcome::AlreadyConfirmed);
    // A refund of one unit of line 1 (SKU 2): back to available, once per request, never more
    // than the line sold.
    let returned = client.return_sold(reservation, 1, SkuId(2), 1).await.unwrap();
    assert_eq!(returned, Outcome::Returned { returned_total: 1 });
    assert_eq!(counts(&client, 2).await, (10, 8, 0, 2));
    let too_many = client.return_sold(reservation, 1, SkuId(2), 3).await.unwrap();
    assert_eq!(too_many, Outcome::ReturnExceedsSold { returnable: 2 });
    let wrong_sku = client.return_sold(reservation, 1, SkuId(3), 1).await.unwrap();
    assert_eq!(wrong_sku, Outcome::NotReturnable);
    let too_many: Vec<_> = (0..17).map(|sku| (SkuId(sku), 1)).collect();
    let invalid = client.reserve_cart(BuyerId(9), &too_many, 60_000).await.unwrap();
    assert!(matches!(invalid, Outcome::InvalidCart { lines_max: 16 }), "{invalid:?}");
    server.stop().await;
}
