//! Three `flashstockd` processes and the machine's etcd (127.0.0.1:2379, started by `.ci/run`):
//! each serves only the slots the map in etcd gives it, answers `Moved` (naming the owner)
//! for the others, and a cluster client routes every call (confirm and cancel by the slot in
//! the reservation id), splits batches by server and follows `Moved` from a stale map.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{start, terminate, token, Daemon};
use flashstock_client::{Client, ClientConfig, ClientError, ClientTls, EtcdConfig};
use flashstock_cluster::{slot_of, Member, ServerId, SlotMap};
use flashstock_cluster_etcd::{store_map, ClusterWatch};
use flashstock_engine::{BuyerId, Command, Lines, Outcome, RequestId, Reserve, ReserveCart, SkuId};
use flashstock_protocol::{Refusal, Reply, Request};

const ETCD: &str = "http://127.0.0.1:2379";

fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("/flashstock-test/{test}-{}-{}", std::process::id(), nanos.as_nanos())
}

/// A cluster of its own for `test`: three servers on fresh data directories (see
/// [`three_daemons`]) under a prefix no other test or run uses.
fn three_servers(test: &str) -> Cluster {
    let prefix = prefix(test);
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let daemons = three_daemons(&dirs, &prefix);
    let etcd = EtcdConfig::new(vec![ETCD.into()], &prefix);
    Cluster { prefix, dirs, daemons, etcd }
}

/// A test's cluster: its etcd prefix, the three servers' data directories and processes.
struct Cluster {
    prefix: String,
    dirs: [tempfile::TempDir; 3],
    daemons: Vec<Daemon>,
    etcd: EtcdConfig,
}

/// Three servers `a`, `b`, `c` of the cluster under `prefix`, sharing `a`'s certificate and
/// tokens (a cluster's clients trust one certificate and hold one token).
fn three_daemons(dirs: &[tempfile::TempDir; 3], prefix: &str) -> Vec<Daemon> {
    let cluster = |id: &'static str| {
        let http = ["--http-listen", "127.0.0.1:0"];
        [&["--etcd", ETCD, "--cluster-prefix", prefix, "--server-id", id][..], &http[..]].concat()
    };
    let a = start(dirs[0].path(), &cluster("a"));
    let key = a.cert.with_file_name("key.pem");
    let shared = [
        "--tls-cert",
        a.cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tokens-file",
        a.tokens.to_str().unwrap(),
    ];
    let b = start(dirs[1].path(), &[&cluster("b")[..], &shared[..]].concat());
    let c = start(dirs[2].path(), &[&cluster("c")[..], &shared[..]].concat());
    vec![a, b, c]
}

async fn cluster_client(daemon: &Daemon, prefix: &str) -> Client {
    let tls = ClientTls::trust_pem_file(&daemon.cert).unwrap();
    let etcd = EtcdConfig::new(vec![ETCD.into()], prefix);
    let admin = token(&daemon.tokens, "admin");
    Client::connect(ClientConfig::cluster(etcd, tls, Some(&admin))).await.unwrap()
}

async fn server_client(daemon: &Daemon) -> Client {
    let tls = ClientTls::trust_pem_file(&daemon.cert).unwrap();
    let admin = token(&daemon.tokens, "admin");
    Client::connect(ClientConfig::new(daemon.addr, "localhost", tls, Some(&admin))).await.unwrap()
}

fn reserve(sku: u64, buyer: u64) -> Request {
    let request = RequestId(u128::from(sku) << 64 | u128::from(buyer));
    Request::Apply(Command::Reserve(Reserve {
        request,
        buyer: BuyerId(buyer),
        sku: SkuId(sku),
        qty: 1,
        ttl_ms: 60_000,
        order_ref: None,
    }))
}

/// Waits up to 5 s for `ready`, checking every 20 ms; fails naming `what`.
async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "not within 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A GET over plain HTTP/1.1, the whole answer as text.
fn http_get(addr: std::net::SocketAddr, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The map's three ranges, each named by its server: `a`, `b`, `c`.
fn even_map() -> SlotMap {
    SlotMap::even(&[ServerId("a".into()), ServerId("b".into()), ServerId("c".into())]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_serve_their_slots_and_a_cluster_client_routes_every_call() {
    let Cluster { prefix, dirs: _dirs, daemons, etcd } = three_servers("three");
    let client = cluster_client(&daemons[0], &prefix).await;
    // No map yet: nobody owns anything, and the client says so.
    assert!(matches!(client.set_stock(SkuId(1), 5).await, Err(ClientError::NoMap)));
    let map = even_map();
    let revision = store_map(&etcd, &map, 0).await.unwrap();
    let watch = ClusterWatch::start(etcd.clone()).await.unwrap();
    assert!(watch.wait_for_map(revision, Duration::from_secs(5)).await);
    let seen = || client.map_revision() >= revision && watch.view().members.len() == 3;
    eventually("the client and the watch see the map and three members", seen).await;

    // 90 SKUs over the three servers: stock, a batch of reserves split by server, confirms
    // and cancels routed by the reservation id's slot.
    let skus: Vec<u64> = (1..=90).collect();
    for &sku in &skus {
        assert!(matches!(
            client.set_stock(SkuId(sku), 10).await.unwrap(),
            Outcome::StockChanged { .. }
        ));
    }
    let batch: Vec<Request> =
        skus.iter().flat_map(|&sku| [reserve(sku, 1), reserve(sku, 2)]).collect();
    let replies = client.call_batch(&batch).await.unwrap();
    let mut held = Vec::new();
    for reply in &replies {
        let Reply::Outcome(Outcome::Reserved { reservation, .. }) = reply else {
            panic!("{reply:?}")
        };
        held.push(*reservation);
    }
    for (index, &reservation) in held.iter().enumerate() {
        let outcome = if index % 2 == 0 {
            client.confirm(reservation).await
        } else {
            client.cancel(reservation).await
        };
        assert!(matches!(outcome.unwrap(), Outcome::Confirmed | Outcome::Cancelled));
    }
    // Each SKU lives on its owner only; the others answer Moved, naming the owner.
    let per_server = [
        server_client(&daemons[0]).await,
        server_client(&daemons[1]).await,
        server_client(&daemons[2]).await,
    ];
    let mut owned_per_server = BTreeMap::new();
    for &sku in &skus {
        let owner = map.owner(slot_of(SkuId(sku))).0.clone();
        *owned_per_server.entry(owner.clone()).or_insert(0) += 1;
        for (name, server) in ["a", "b", "c"].iter().zip(&per_server) {
            let reply = server.call(Request::QuerySku(SkuId(sku))).await.unwrap();
            match reply {
                Reply::Sku(Some(view)) if *name == owner => {
                    assert_eq!((view.total, view.available, view.sold), (10, 9, 1), "sku {sku}");
                }
                Reply::Moved(moved) if *name != owner => {
                    assert_eq!(
                        (moved.server.as_str(), moved.slot, moved.map_revision),
                        (owner.as_str(), slot_of(SkuId(sku)).0, revision)
                    );
                }
                other => panic!("sku {sku} on {name} (owner {owner}): {other:?}"),
            }
        }
    }
    assert_eq!(
        owned_per_server.len(),
        3,
        "every server owns some of the SKUs: {owned_per_server:?}"
    );
    // Member entries name the bound addresses (port 0 included) and the shard count.
    let a_entry = &watch.view().members[&ServerId("a".into())];
    assert_eq!((a_entry.quic, a_entry.http, a_entry.shards), (daemons[0].addr, daemons[0].http, 2));
    // A server of another shard count is refused at join: reservations could not move to it.
    let other = tempfile::tempdir().unwrap();
    let mut joining = std::process::Command::new(env!("CARGO_BIN_EXE_flashstockd"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "", "--shards", "1"])
        .args(["--etcd", ETCD, "--cluster-prefix", &prefix, "--server-id", "d"])
        .arg("--data-dir")
        .arg(other.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = joining.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            joining.kill().unwrap();
            panic!("a server of another shard count joined the cluster");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut joining.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success() && stderr.contains("runs 2 shards"), "{stderr}");
    assert!(!watch.view().members.contains_key(&ServerId("d".into())), "d never registered");

    // Over HTTP too: another server's SKU is answered 421, naming the owner.
    let sku_of_b = skus.iter().find(|&&s| map.owner(slot_of(SkuId(s))).0 == "b").unwrap();
    let admin = token(&daemons[0].tokens, "admin");
    let answer = http_get(daemons[0].http.unwrap(), &format!("/v1/skus/{sku_of_b}"), &admin);
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    assert!(answer.contains("\"moved\"") && answer.contains("\\\"b\\\""), "{answer}");
    let answer = http_get(daemons[1].http.unwrap(), &format!("/v1/skus/{sku_of_b}"), &admin);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A cart whose lines live on two servers is refused as such, never half-applied.
    let (sku_a, sku_b) = {
        let on = |name: &str| {
            skus.iter().copied().find(|&s| map.owner(slot_of(SkuId(s))).0 == name).unwrap()
        };
        (on("a"), on("b"))
    };
    let lines = Lines::numbered([(SkuId(sku_a), 1), (SkuId(sku_b), 1)]).unwrap();
    let cart = ReserveCart {
        request: RequestId(77),
        buyer: BuyerId(9),
        lines,
        ttl_ms: 60_000,
        order_ref: None,
    };
    let reply = per_server[0].call(Request::ReserveCart(Box::new(cart))).await;
    assert!(
        matches!(reply, Err(ClientError::Refused { refusal: Refusal::SpansServers { .. } })),
        "{reply:?}"
    );

    // A server that leaves is gone from the members at once: its slots' calls fail typed.
    let [a, b, c]: [Daemon; 3] = daemons.try_into().ok().unwrap();
    terminate(c);
    let sku_c = skus.iter().copied().find(|&s| map.owner(slot_of(SkuId(s))).0 == "c").unwrap();
    eventually("c's member entry is removed when it stops", || watch.view().members.len() == 2)
        .await;
    let err = client.query_sku(SkuId(sku_c)).await.unwrap_err();
    assert!(matches!(&err, ClientError::ServerDown { server, .. } if server == "c"), "{err}");
    assert!(client.query_sku(SkuId(sku_a)).await.unwrap().is_some(), "the others still serve");
    client.close().await;
    terminate(a);
    terminate(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_stale_map_follows_moved_to_the_owner() {
    let Cluster { prefix, dirs: _dirs, daemons, etcd } = three_servers("stale");
    store_map(&etcd, &even_map(), 0).await.unwrap();
    // The client reads another prefix, where every slot is `a`'s and the members are the
    // real ones: a map as stale as a client's can get.
    let stale_prefix = format!("{prefix}-stale");
    let stale = EtcdConfig::new(vec![ETCD.into()], &stale_prefix);
    let mut etcd_client = stale.connect().await.unwrap();
    for (name, daemon) in ["a", "b", "c"].iter().zip(&daemons) {
        let member =
            Member { quic: daemon.addr, server_name: "localhost".into(), http: None, shards: 2 };
        etcd_client
            .put(stale.member_key(&ServerId((*name).into())), member.to_json(), None)
            .await
            .unwrap();
    }
    store_map(&stale, &SlotMap::single(ServerId("a".into())).unwrap(), 0).await.unwrap();
    let client = cluster_client(&daemons[0], &stale_prefix).await;
    let map = even_map();
    let skus: Vec<u64> = (1..=30).collect();
    for &sku in &skus {
        assert!(
            matches!(client.set_stock(SkuId(sku), 3).await.unwrap(), Outcome::StockChanged { .. }),
            "sku {sku}"
        );
    }
    // Batches too: the requests answered Moved go on to their owners.
    let batch: Vec<Request> = skus.iter().map(|&sku| reserve(sku, 5)).collect();
    for reply in client.call_batch(&batch).await.unwrap() {
        assert!(matches!(reply, Reply::Outcome(Outcome::Reserved { .. })), "{reply:?}");
    }
    // And the stock is where the real map puts it.
    for (name, daemon) in ["a", "b", "c"].iter().zip(&daemons) {
        let server = server_client(daemon).await;
        for &sku in &skus {
            let on_it = map.owner(slot_of(SkuId(sku))).0 == *name;
            let reply = server.call(Request::QuerySku(SkuId(sku))).await.unwrap();
            assert_eq!(
                matches!(reply, Reply::Sku(Some(ref v)) if v.available == 2),
                on_it,
                "sku {sku} on {name}: {reply:?}"
            );
        }
    }
    client.close().await;
    for daemon in daemons {
        terminate(daemon);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_writer_stores_every_servers_sales_once_and_follows_a_restarted_server() {
    use flashstock_order_writer::{OrderStore, WriterConfig, WriterStats};
    let Cluster { prefix, dirs, mut daemons, etcd } = three_servers("writer");
    let revision = store_map(&etcd, &even_map(), 0).await.unwrap();
    let client = cluster_client(&daemons[0], &prefix).await;
    eventually("the client sees the map", || client.map_revision() >= revision).await;
    let confirm_all = |skus: std::ops::RangeInclusive<u64>, buyer: u64| {
        let client = client.clone();
        async move {
            for sku in skus.clone() {
                client.set_stock(SkuId(sku), 5).await.unwrap();
            }
            let batch: Vec<Request> = skus.map(|sku| reserve(sku, buyer)).collect();
            for reply in client.call_batch(&batch).await.unwrap() {
                let Reply::Outcome(Outcome::Reserved { reservation, .. }) = reply else {
                    panic!("{reply:?}")
                };
                assert_eq!(client.confirm(reservation).await.unwrap(), Outcome::Confirmed);
            }
        }
    };
    confirm_all(1..=60, 1).await;

    let orders = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", orders.path().join("orders.db").display());
    let tls = ClientTls::trust_pem_file(&daemons[0].cert).unwrap();
    let consumer = token(&daemons[0].tokens, "consumer");
    let config = WriterConfig {
        cluster: Some(etcd.clone()),
        ..WriterConfig::new(daemons[0].addr, tls, consumer, vec![url.clone()])
    };
    // Connected (and migrated) before the writer starts: two migrations at once collide.
    let store = OrderStore::connect(std::slice::from_ref(&url)).await.unwrap();
    let stats = std::sync::Arc::new(WriterStats::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(flashstock_order_writer::run(config, stats.clone(), async {
        let _ = stopped.await;
    }));
    let rows_reach = |count: u64| {
        let store = store.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), async {
                while store.count("confirmed").await.unwrap() < count {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{count} rows"));
        }
    };
    rows_reach(60).await;

    // b stops and comes back on another port: the writer finds it again by its new entry,
    // and what b sold meanwhile (nothing) and after arrives once.
    let b = daemons.remove(1);
    terminate(b);
    let restarted = {
        let key = daemons[0].cert.with_file_name("key.pem");
        let args = [
            "--etcd",
            ETCD,
            "--cluster-prefix",
            &prefix,
            "--server-id",
            "b",
            "--tls-cert",
            daemons[0].cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tokens-file",
            daemons[0].tokens.to_str().unwrap(),
        ];
        start(dirs[1].path(), &args)
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Until the client's view has b's new address, b's SKUs fail ServerDown.
            let mut reachable = true;
            for sku in 61..=120 {
                reachable &= client.query_sku(SkuId(sku)).await.is_ok();
            }
            if reachable {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    confirm_all(61..=120, 2).await;
    rows_reach(120).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.count("confirmed").await.unwrap(), 120, "each sale stored once");
    let _ = stop.send(());
    writer.await.unwrap().unwrap();
    client.close().await;
    terminate(restarted);
    for daemon in daemons {
        terminate(daemon);
    }
}

/// Starts server `id` of the cluster under `prefix` on `dir`; `b` and `c` share `a`'s
/// certificate and tokens (`a` made them in its own directory).
fn cluster_server(dir: &std::path::Path, prefix: &str, id: &str, a: Option<&Daemon>) -> Daemon {
    let mut args = vec!["--etcd", ETCD, "--cluster-prefix", prefix, "--server-id", id];
    let key = a.map(|a| a.cert.with_file_name("key.pem"));
    if let (Some(a), Some(key)) = (a, key.as_ref()) {
        let (cert, key, tokens) =
            (a.cert.to_str().unwrap(), key.to_str().unwrap(), a.tokens.to_str().unwrap());
        args.extend(["--tls-cert", cert, "--tls-key", key, "--tokens-file", tokens]);
    }
    start(dir, &args)
}

/// What the load asked and what it was told: every reserve and confirm, by request id, with
/// the answer it got (`None`: no answer in time; asked again at the audit).
#[derive(Default)]
struct Ledger {
    reserves: Vec<(Command, Option<Outcome>)>,
    confirms: Vec<(Command, Option<Outcome>)>,
}

/// Reserves and confirms on `skus` through the cluster client until `stop`, one call at a
/// time per task, as an order service would during the move.
async fn load(
    client: Client,
    skus: Vec<u64>,
    task: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Ledger {
    let mut ledger = Ledger::default();
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let sku = SkuId(skus[(n * 7 + task) as usize % skus.len()]);
        let request = RequestId(u128::from(task) << 96 | u128::from(n) << 1);
        let buyer = BuyerId(task * 1_000_000 + n);
        let reserve = Command::Reserve(Reserve {
            request,
            buyer,
            sku,
            qty: 1,
            ttl_ms: 600_000,
            order_ref: None,
        });
        let answer = client.apply(reserve).await.ok();
        ledger.reserves.push((reserve, answer));
        if answer.is_none() {
            // A server is down (killed by the test): back off as a service would.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let (Some(Outcome::Reserved { reservation, .. }), true) = (answer, n % 2 == 0) {
            let request = RequestId(request.0 | 1);
            let confirm = Command::Confirm { request, reservation, order_ref: None };
            ledger.confirms.push((confirm, client.apply(confirm).await.ok()));
        }
    }
    ledger
}

/// Asks every unanswered request again (same request id, so applied at most once; the
/// answer is the first one, wherever its slot moved), then checks every SKU of `skus`
/// against what was acknowledged: units held = reserves answered `Reserved` minus confirms
/// answered `Confirmed`, units sold = those confirms, nothing lost or made.
async fn audit(client: &Client, skus: &[u64], total: u64, ledgers: Vec<Ledger>) -> (usize, usize) {
    let (mut held, mut sold): (BTreeMap<SkuId, u64>, BTreeMap<SkuId, u64>) = Default::default();
    let (mut reserves, mut confirms) = (0, 0);
    for ledger in ledgers {
        for (command, answer) in ledger.reserves {
            let answer = match answer {
                Some(answer) => answer,
                None => client.apply(command).await.expect("a retry is answered after the move"),
            };
            if let (Outcome::Reserved { .. }, Command::Reserve(r)) = (answer, command) {
                *held.entry(r.sku).or_default() += 1;
                reserves += 1;
            }
        }
        for (command, answer) in ledger.confirms {
            let answer = match answer {
                Some(answer) => answer,
                None => client.apply(command).await.expect("a retry is answered after the move"),
            };
            let Command::Confirm { reservation, .. } = command else { unreachable!() };
            if answer == Outcome::Confirmed {
                let view = client.query_reservation(reservation).await.unwrap().expect("known");
                *sold.entry(view.sku).or_default() += 1;
                *held.get_mut(&view.sku).unwrap() -= 1;
                confirms += 1;
            }
        }
    }
    for &sku in skus {
        let sku = SkuId(sku);
        let view = client.query_sku(sku).await.unwrap().expect("every SKU still exists");
        let (h, s) = (held.get(&sku).copied().unwrap_or(0), sold.get(&sku).copied().unwrap_or(0));
        assert_eq!((view.total, view.reserved, view.sold), (total, h, s), "{sku:?}: {view:?}");
        assert_eq!(view.available + view.reserved + view.sold, view.total, "{sku:?}");
    }
    (reserves, confirms)
}

/// A slot range moves from `a` to `b` under load through the cluster client, with `a` (the
/// source) SIGKILLed while the range is frozen and `b` (the target) SIGKILLed once it holds
/// a copy; each restarts and the move is resumed. Then a move from `c` is rolled back. Every
/// acknowledged reserve and confirm is found, every unanswered one answered once, and each
/// SKU's stock adds up to exactly what was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_range_moves_live_through_sigkills_of_source_and_target() {
    use flashstock_admin::cli::MovePhase;
    use flashstock_admin::moves::{self, Access};
    let prefix = prefix("move");
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let a = cluster_server(dirs[0].path(), &prefix, "a", None);
    let b = cluster_server(dirs[1].path(), &prefix, "b", Some(&a));
    let c = cluster_server(dirs[2].path(), &prefix, "c", Some(&a));
    let etcd = EtcdConfig::new(vec![ETCD.into()], &prefix);
    let revision = store_map(&etcd, &even_map(), 0).await.unwrap();
    let client = cluster_client(&a, &prefix).await;
    eventually("the client sees the map", || client.map_revision() >= revision).await;
    // SKUs of the slots that move (a's first 600) and of c's, 1,000 units each.
    let of = |slots: std::ops::RangeInclusive<u16>| -> Vec<u64> {
        (1..20_000).filter(|&s| slots.contains(&slot_of(SkuId(s)).0)).take(24).collect()
    };
    let (moving, rolled_back) = (of(0..=599), of(3_000..=3_199));
    for &sku in moving.iter().chain(&rolled_back) {
        client.set_stock(SkuId(sku), 1_000).await.unwrap();
    }
    let access = Access {
        tls: ClientTls::trust_pem_file(&a.cert).unwrap(),
        token: token(&a.tokens, "admin"),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..4)
        .map(|task| tokio::spawn(load(client.clone(), moving.clone(), task, stopped.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Frozen on both, then the source dies and comes back frozen (its log says so).
    let paused =
        moves::start(&etcd, &access, ("0-599", "b"), Some(MovePhase::Frozen)).await.unwrap();
    assert!(paused.note.unwrap().contains("paused"));
    let a_addr = a.addr;
    drop(a); // SIGKILL
    let a = cluster_server(dirs[0].path(), &prefix, "a", None);
    assert_eq!(a.addr.ip(), a_addr.ip());
    let frozen = server_client(&a).await.slots_status().await.unwrap().0;
    assert_eq!(frozen, vec![(0, 599)], "the restarted source is still frozen");

    // Copied, then the target dies holding its copy; resumed, the copy is made again.
    moves::resume(&etcd, &access, Some(MovePhase::Copied)).await.unwrap();
    drop(b); // SIGKILL
    let b = cluster_server(dirs[1].path(), &prefix, "b", Some(&a));
    let done = moves::resume(&etcd, &access, None).await.unwrap();
    assert!(done.ok, "{:?}", done.note);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(true);
    let mut ledgers = Vec::new();
    for task in tasks {
        ledgers.push(task.await.unwrap());
    }
    let (reserves, confirms) = audit(&client, &moving, 1_000, ledgers).await;
    assert!(reserves > 50 && confirms > 20, "{reserves} reserves, {confirms} confirms");

    // The range is b's: a answers Moved for it and holds nothing frozen.
    let direct = server_client(&a).await;
    let asked = direct.call(Request::QuerySku(SkuId(moving[0]))).await.unwrap();
    assert!(matches!(&asked, Reply::Moved(m) if m.server == "b"), "{asked:?}");
    assert!(direct.slots_status().await.unwrap().0.is_empty());

    // A move from c rolled back: c serves its SKUs again, a dropped its copy.
    moves::start(&etcd, &access, ("3000-3199", "a"), Some(MovePhase::Copied)).await.unwrap();
    // Asked of c itself in one frame, which is not retried: the cluster client retries a
    // moving slot until its deadline, and with the cores busy its last try could outlast the
    // deadline and be answered `Timeout` (seen), which says nothing about c.
    let c_client = server_client(&c).await;
    let sku = SkuId(rolled_back[0]);
    let set = Command::SetStock { request: RequestId(u128::MAX - 3), sku, total: 1_000 };
    let refused = c_client.call_batch(&[Request::Apply(set)]).await.unwrap();
    assert!(matches!(refused[..], [Reply::Refused(Refusal::SlotMoving { .. })]), "{refused:?}");
    assert!(moves::abort(&etcd).await.unwrap().ok);
    tokio::time::timeout(Duration::from_secs(10), async {
        while !c_client.slots_status().await.unwrap().0.is_empty()
            || !direct.slots_status().await.unwrap().0.is_empty()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("both servers settle within 10 s of the abort");
    let view = client.query_sku(SkuId(rolled_back[0])).await.unwrap().unwrap();
    assert_eq!(view.total, 1_000);
    for connected in [client, direct, c_client] {
        connected.close().await;
    }
    for daemon in [a, b, c] {
        terminate(daemon);
    }
}
