//! What a peer can make the server hold: each bound the network layer promises, pushed on by a
//! peer that sends for long, sends without authenticating, or never reads.

use std::sync::atomic::{AtomicU64, Ordering};

use flashstock_engine::{BuyerId, Command, RequestId, Reserve, SkuId};
use flashstock_protocol::{Reply, Request};
use flashstock_tests::server::TestServer;

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

fn reserve(buyer: u64, sku: u64) -> Request {
    Request::Apply(Command::Reserve(Reserve {
        request: RequestId(u128::from(NEXT_REQUEST.fetch_add(1, Ordering::Relaxed))),
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
    // Every frame was answered, so at most the last one's task may still be finishing.
    let held = server.stats.batch_tasks_held();
    assert!(held <= 1, "{held} request-batch tasks held after {FRAMES} answered frames");
    server.stop().await;
}
