//! Idempotency keys chosen by the caller, across a caller's own death: a client process is
//! killed after the server applied its call but before the answer reached it, and a new
//! process makes the same call under the same key. There is one effect, and the new process
//! gets the first answer.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flashstock_client::{Client, ClientConfig};
use flashstock_engine::{ReservationId, SkuId};
use flashstock_tests::proxy::UdpProxy;
use flashstock_tests::server::TestServer;

/// A `keyed-call` child, connected and waiting for its go line.
struct Caller {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Caller {
    fn start(
        server: &TestServer,
        dir: &std::path::Path,
        via: std::net::SocketAddr,
        args: &[&str],
    ) -> Caller {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyed-call"))
            .arg(via.to_string())
            .arg(dir)
            .arg(&server.service_token)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn keyed-call");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "CONNECTED");
        Caller { child, stdin, lines }
    }

    fn go(&mut self) {
        writeln!(self.stdin, "go").unwrap();
    }

    fn answer(mut self) -> String {
        let line = self.lines.next().expect("an answer line").unwrap();
        assert!(self.child.wait().unwrap().success());
        line
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

async fn counts(client: &Client, sku: u64) -> (u64, u64, u64) {
    let view = client.query_sku(SkuId(sku)).await.unwrap().unwrap();
    (view.available, view.reserved, view.sold)
}

/// Waits until `sku` stands at `want` (the killed caller's call was applied).
async fn until(client: &Client, sku: u64, want: (u64, u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counts(client, sku).await != want {
        assert!(Instant::now() < deadline, "sku {sku} never reached {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_killed_mid_call_and_a_new_process_retrying_its_key_make_one_effect() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let config =
        ClientConfig::new(server.addr, "localhost", server.tls(), Some(&server.admin_token));
    let admin = Client::connect(config).await.unwrap();
    for sku in 1..=2 {
        admin.set_stock(SkuId(sku), 10).await.unwrap();
    }
    let proxy = UdpProxy::start(server.addr).await;

    // The cart reaches the server; its answer never reaches the caller, who dies.
    let cart = ["order-1", "cart", "7", "1:2,2:3"];
    let mut caller = Caller::start(&server, dir.path(), proxy.addr, &cart);
    proxy.drop_to_client.store(true, Ordering::Release);
    caller.go();
    until(&admin, 2, (7, 3, 0)).await;
    caller.kill();
    // A new process, the same key: the first answer, and still one cart held.
    let mut retry = Caller::start(&server, dir.path(), server.addr, &cart);
    retry.go();
    let answer = retry.answer();
    assert!(answer.starts_with("ANSWER Reserved"), "{answer}");
    assert_eq!((counts(&admin, 1).await, counts(&admin, 2).await), ((8, 2, 0), (7, 3, 0)));
    let reservation = parse_reservation(&answer);
    assert!(admin.query_cart(reservation).await.unwrap().is_some());

    // The same for its confirm: the retry gets `Confirmed` (the first answer), where a new
    // request would have been told `AlreadyConfirmed`.
    proxy.drop_to_client.store(false, Ordering::Release);
    let id = reservation.0.to_string();
    let confirm = ["order-1", "confirm", id.as_str()];
    let mut caller = Caller::start(&server, dir.path(), proxy.addr, &confirm);
    proxy.drop_to_client.store(true, Ordering::Release);
    caller.go();
    until(&admin, 2, (7, 0, 3)).await;
    caller.kill();
    let mut retry = Caller::start(&server, dir.path(), server.addr, &confirm);
    retry.go();
    assert_eq!(retry.answer(), "ANSWER Confirmed");
    assert_eq!(
        admin.confirm(reservation).await.unwrap(),
        flashstock_engine::Outcome::AlreadyConfirmed
    );
    assert_eq!((counts(&admin, 1).await, counts(&admin, 2).await), ((8, 0, 2), (7, 0, 3)));
    admin.close().await;
    server.stop().await;
}

/// The reservation in `ANSWER Reserved { reservation: R<slot>.<shard>.<seq>, .. }`.
fn parse_reservation(answer: &str) -> ReservationId {
    let id = answer.split("reservation: R").nth(1).expect("a reservation");
    let parts: Vec<u64> =
        id.split(|c: char| !c.is_ascii_digit()).take(3).map(|part| part.parse().unwrap()).collect();
    let (slot, shard) = (flashstock_engine::Slot(parts[0] as u16), parts[1] as u16);
    ReservationId::new(slot, flashstock_engine::ShardId(shard), parts[2])
}
