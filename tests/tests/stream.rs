//! The committed-deduction stream over real loopback QUIC: every confirm arrives once per
//! subscription with its detail, acknowledged cursors survive a server restart, the window
//! bounds what an unacknowledging consumer is sent, the log is kept for it, and bad
//! subscriptions and acks get typed errors while other clients are still served.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flashstock_client::{Client, ClientConfig, ClientError, SubscribeOptions, Subscriber};
use flashstock_engine::{
    BuyerId, Change, EventKind, OrderRef, Outcome, ReservationId, ReservationState, SkuId,
};
use flashstock_protocol::tokens::DEFAULT_CONSUMER;
use flashstock_protocol::{ErrorCode, EventBatch, Refusal, StartAt};
use flashstock_runtime::RuntimeConfig;
use flashstock_tests::server::TestServer;

const TTL_MS: u64 = 60_000;

async fn client(server: &TestServer, token: &str) -> Client {
    let config = ClientConfig::new(server.addr, "localhost", server.tls(), Some(token));
    Client::connect(config).await.unwrap()
}

async fn subscribe(server: &TestServer, options: SubscribeOptions) -> Subscriber {
    try_subscribe(server, &server.consumer_token, options).await.unwrap()
}

async fn try_subscribe(
    server: &TestServer,
    token: &str,
    options: SubscribeOptions,
) -> Result<Subscriber, ClientError> {
    Subscriber::connect(server.addr, "localhost", &server.tls(), Some(token), options).await
}

async fn next(subscriber: &mut Subscriber) -> EventBatch {
    tokio::time::timeout(Duration::from_secs(10), subscriber.next_batch())
        .await
        .expect("a batch within 10 s")
        .unwrap()
}

/// Reads batches until `count` events of interest arrived; returns them by reservation.
async fn confirmed(
    subscriber: &mut Subscriber,
    count: usize,
) -> BTreeMap<ReservationId, (BuyerId, u32, Option<OrderRef>)> {
    let mut seen = BTreeMap::new();
    while seen.len() < count {
        for event in next(subscriber).await.events {
            if let Change::Ended(ended) = event.event.change {
                if ended.state == ReservationState::Confirmed {
                    let fresh =
                        seen.insert(ended.reservation, (ended.buyer, ended.qty, ended.order_ref));
                    assert!(fresh.is_none(), "{:?} delivered twice", ended.reservation);
                }
            }
        }
    }
    seen
}

/// Reserves `count` units of `sku` one by one and confirms each, the odd ones with an order
/// reference; returns what the stream must report.
async fn sell(
    service: &Client,
    sku: SkuId,
    count: u64,
) -> BTreeMap<ReservationId, (BuyerId, u32, Option<OrderRef>)> {
    let mut sold = BTreeMap::new();
    for buyer in 0..count {
        let Outcome::Reserved { reservation, .. } =
            service.reserve(BuyerId(buyer), sku, 1, TTL_MS).await.unwrap()
        else {
            panic!("stock for every buyer");
        };
        let order_ref = (buyer % 2 == 1).then_some(OrderRef(u128::from(buyer) + 1_000));
        let outcome = match order_ref {
            Some(order_ref) => service.confirm_order(reservation, order_ref).await.unwrap(),
            None => service.confirm(reservation).await.unwrap(),
        };
        assert_eq!(outcome, Outcome::Confirmed);
        sold.insert(reservation, (BuyerId(buyer), 1, order_ref));
    }
    sold
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirm_arrives_once_with_its_detail_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start_at(dir.path(), addr).await;
    let admin = client(&server, &server.admin_token).await;
    let service = client(&server, &server.service_token).await;
    let sku = SkuId(11);
    admin.set_stock(sku, 1_000).await.unwrap();

    // A subscriber from before the sale sees every confirm exactly once, with its detail.
    let mut writer = subscribe(&server, SubscribeOptions::new("writer")).await;
    assert_eq!(writer.start_cursor(), &[0, 0]);
    let sold = sell(&service, sku, 200).await;
    // A cancelled and an expired reservation show up too (unfiltered subscription).
    let Outcome::Reserved { reservation: cancelled, .. } =
        service.reserve(BuyerId(900), sku, 1, TTL_MS).await.unwrap()
    else {
        panic!()
    };
    service.cancel(cancelled).await.unwrap();
    assert_eq!(confirmed(&mut writer, 200).await, sold);
    let mut cancels = 0;
    while cancels == 0 {
        for event in next(&mut writer).await.events {
            if let Change::Ended(ended) = event.event.change {
                assert_eq!(
                    (ended.reservation, ended.state),
                    (cancelled, ReservationState::Cancelled)
                );
                cancels += 1;
            }
        }
    }
    writer.ack_delivered().await.unwrap();
    let acked = writer.delivered().to_vec();

    // A filtered subscription of a second consumer gets confirms only.
    let mut options = SubscribeOptions::new("confirms-only");
    options.kinds = vec![EventKind::Confirmed];
    options.start = StartAt::Earliest;
    let mut filtered = subscribe(&server, options).await;
    assert_eq!(confirmed(&mut filtered, 200).await, sold);

    // More sales after the ack, then a restart: the writer resumes from its acknowledged
    // cursor and gets exactly the sales it had not acknowledged.
    let later = sell(&service, sku, 50).await;
    writer.close();
    filtered.close();
    admin.close().await;
    service.close().await;
    server.stop().await;
    let server = TestServer::start_at(dir.path(), addr).await;
    let mut writer = subscribe(&server, SubscribeOptions::new("writer")).await;
    assert_eq!(writer.start_cursor(), &acked[..], "resumed from the acknowledged cursor");
    assert_eq!(confirmed(&mut writer, 50).await, later);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledging_consumer_gets_one_window_and_the_log_is_kept_for_it() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots every 100 records would truncate the log at once without the consumer.
    let config = RuntimeConfig {
        shard_count: 2,
        snapshot_every_records: 100,
        snapshot_every_ms: 10,
        ..RuntimeConfig::default()
    };
    let server =
        TestServer::start_configured(dir.path(), "127.0.0.1:0".parse().unwrap(), config, None)
            .await;
    let admin = client(&server, &server.admin_token).await;
    let service = client(&server, &server.service_token).await;
    let sku = SkuId(12);
    admin.set_stock(sku, 10_000).await.unwrap();

    let mut options = SubscribeOptions::new("stuck");
    options.window_events = 40;
    options.kinds = vec![EventKind::Confirmed];
    let mut stuck = subscribe(&server, options).await;
    let sold = sell(&service, sku, 300).await;

    // It is sent 40 events and then nothing more until it acknowledges.
    let mut received = 0;
    while received < 40 {
        received += next(&mut stuck).await.events.len();
    }
    assert_eq!(received, 40, "never more than the window");
    let more = tokio::time::timeout(Duration::from_millis(500), stuck.next_batch()).await;
    assert!(more.is_err(), "nothing beyond the window: {more:?}");

    // Snapshots ran, yet the log still holds everything it has not acknowledged: a second
    // consumer reading from where it started gets all 300.
    let mut late = SubscribeOptions::new("late");
    late.start = StartAt::Cursor(stuck.start_cursor().to_vec());
    late.kinds = vec![EventKind::Confirmed];
    let mut late = subscribe(&server, late).await;
    assert_eq!(confirmed(&mut late, 300).await, sold);

    // Acknowledging frees the window: the rest arrives.
    stuck.ack_delivered().await.unwrap();
    let mut rest = 0;
    while rest < 260 {
        let batch = next(&mut stuck).await;
        rest += batch.events.len();
        stuck.ack_delivered().await.unwrap();
    }
    assert_eq!(rest, 260);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_and_acks_get_typed_errors_and_others_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    // A tiny retention cap: a consumer 10 records behind is cut loose at the next snapshot.
    let config = RuntimeConfig {
        shard_count: 2,
        snapshot_every_records: 50,
        snapshot_every_ms: 10,
        consumer_retention_records_max: 10,
        ..RuntimeConfig::default()
    };
    let server =
        TestServer::start_configured(dir.path(), "127.0.0.1:0".parse().unwrap(), config, None)
            .await;
    let admin = client(&server, &server.admin_token).await;
    let service = Arc::new(client(&server, &server.service_token).await);
    let sku = SkuId(13);
    admin.set_stock(sku, 10_000).await.unwrap();

    let rejected = |result: Result<Subscriber, ClientError>| match result {
        Err(ClientError::Rejected { code, .. }) => code,
        other => panic!("expected a rejection, got {other:?}"),
    };
    // A service credential may not subscribe; neither may a bad consumer name or cursor.
    let options = SubscribeOptions::new("writer");
    let code = rejected(try_subscribe(&server, &server.service_token, options.clone()).await);
    assert_eq!(code, ErrorCode::PermissionDenied);
    let bad_name = SubscribeOptions::new("no spaces allowed");
    let code = rejected(try_subscribe(&server, &server.consumer_token, bad_name).await);
    assert_eq!(code, ErrorCode::InvalidSubscription);
    let mut short = SubscribeOptions::new("short");
    short.start = StartAt::Cursor(vec![0]);
    let code = rejected(try_subscribe(&server, &server.consumer_token, short).await);
    assert_eq!(code, ErrorCode::InvalidSubscription);
    let mut beyond = SubscribeOptions::new("beyond");
    beyond.start = StartAt::Cursor(vec![1_000_000, 0]);
    let code = rejected(try_subscribe(&server, &server.consumer_token, beyond).await);
    assert_eq!(code, ErrorCode::InvalidSubscription);

    // A consumer token acts for the consumers it names only: the order writer's token can
    // neither take over another consumer nor be taken over by another consumer's token
    // (which could then acknowledge its cursor past orders it never stored).
    let ours = SubscribeOptions::new(DEFAULT_CONSUMER);
    let writer = try_subscribe(&server, &server.order_writer_token, ours.clone()).await;
    let mut writer = writer.unwrap();
    let theirs = try_subscribe(&server, &server.order_writer_token, options.clone()).await;
    assert_eq!(rejected(theirs), ErrorCode::PermissionDenied, "its token, another name");
    let intruder = try_subscribe(&server, &server.audit_token, ours).await;
    assert_eq!(rejected(intruder), ErrorCode::PermissionDenied, "another's token, its name");
    let untouched = tokio::time::timeout(Duration::from_millis(300), writer.next_batch()).await;
    assert!(!matches!(untouched, Ok(Err(_))), "the writer's subscription lives: {untouched:?}");

    // One subscription per consumer name at a time: the newest replaces the older one.
    let mut older = subscribe(&server, options.clone()).await;
    let mut first = subscribe(&server, options).await;
    let replaced = tokio::time::timeout(Duration::from_secs(10), older.next_batch()).await.unwrap();
    assert!(
        matches!(replaced, Err(ClientError::Rejected { code: ErrorCode::Replaced, .. })),
        "{replaced:?}"
    );

    // An ack beyond what was delivered closes that subscription with InvalidAck.
    first.ack_cursor(&[5, 5]).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), first.next_batch()).await.unwrap();
    assert!(
        matches!(closed, Err(ClientError::Rejected { code: ErrorCode::InvalidAck, .. })),
        "{closed:?}"
    );

    // A consumer that falls past the retention cap finds its cursor truncated.
    let mut laggard = SubscribeOptions::new("laggard");
    laggard.window_events = 1;
    let laggard = subscribe(&server, laggard).await;
    sell(&service, sku, 400).await;
    laggard.close();
    let mut from_start = SubscribeOptions::new("laggard");
    from_start.start = StartAt::Cursor(vec![0, 0]);
    let mut truncated = None;
    for _ in 0..100 {
        match try_subscribe(&server, &server.consumer_token, from_start.clone()).await {
            Err(ClientError::Rejected { code, .. }) if code == ErrorCode::CursorTruncated => {
                truncated = Some(code);
                break;
            }
            // The claim of the closed subscription may not be released yet, or no snapshot
            // has run: try again shortly.
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(truncated, Some(ErrorCode::CursorTruncated));

    // Through all of it, the service client is still served and the stock adds up.
    let view = service.query_sku(sku).await.unwrap().unwrap();
    assert_eq!((view.sold, view.available), (400, 9_600));
    server.stop().await;
}

/// An admin lists the registered consumers and removes one: its cursor stops holding the log
/// back and its open subscription is closed. Anyone else is refused, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_lists_and_removes_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let admin = client(&server, &server.admin_token).await;
    let service = client(&server, &server.service_token).await;
    let mut live = subscribe(&server, SubscribeOptions::new("live")).await;
    let idle = subscribe(&server, SubscribeOptions::new("idle")).await;
    idle.close();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let refused = service.list_consumers().await.unwrap_err();
    assert!(
        matches!(refused, ClientError::Refused { refusal: Refusal::PermissionDenied }),
        "{refused}"
    );
    let refused = service.remove_consumer("live").await.unwrap_err();
    assert!(
        matches!(refused, ClientError::Refused { refusal: Refusal::PermissionDenied }),
        "{refused}"
    );

    let listed = admin.list_consumers().await.unwrap();
    let names: Vec<(&str, bool)> = listed.iter().map(|c| (c.name.as_str(), c.subscribed)).collect();
    assert_eq!(names, [("idle", false), ("live", true)]);
    assert_eq!(listed[0].acked.len(), 2, "one position per shard");

    assert!(admin.remove_consumer("live").await.unwrap());
    assert!(!admin.remove_consumer("never-registered").await.unwrap());
    let closed = tokio::time::timeout(Duration::from_secs(10), live.next_batch()).await.unwrap();
    assert!(
        matches!(closed, Err(ClientError::Rejected { code: ErrorCode::Replaced, .. })),
        "the removed consumer's subscription is closed: {closed:?}"
    );
    let names: Vec<String> =
        admin.list_consumers().await.unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["idle"]);
    server.stop().await;
}
