//! The HTTP/JSON API of the `flashstockd` binary, called as a Python or Go service calls it:
//! plain HTTP/1.1 over TCP, JSON bodies, bearer tokens, `Idempotency-Key`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use flashstock_client::{Client, ClientConfig, ClientTls};
use flashstock_engine::{BuyerId, Outcome, SkuId};
use serde_json::{json, Value};

mod common;
use common::{scrape, series_value, start, terminate, token, Daemon};

/// An answer: status, headers (lower-cased names), JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends raw bytes on a fresh connection and reads the answer to the end.
fn exchange(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(raw).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let body = if body.is_empty() { Value::Null } else { serde_json::from_str(body).unwrap() };
    Answer { status, headers, body }
}

/// One call: `token` and `key` as headers when given, `body` as JSON when given.
fn call(
    addr: SocketAddr,
    (method, path): (&str, &str),
    token: Option<&str>,
    key: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(token) = token {
        raw.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(key) = key {
        raw.push_str(&format!("Idempotency-Key: {key}\r\n"));
    }
    let body = body.unwrap_or("");
    raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    exchange(addr, raw.as_bytes())
}

struct Api {
    addr: SocketAddr,
    admin: String,
    service: String,
    consumer: String,
}

impl Api {
    fn of(daemon: &Daemon) -> Api {
        Api {
            addr: daemon.http.expect("started with --http-listen"),
            admin: token(&daemon.tokens, "admin"),
            service: token(&daemon.tokens, "service"),
            consumer: token(&daemon.tokens, "consumer"),
        }
    }

    fn admin(&self, method: &str, path: &str, body: Value) -> Answer {
        let body = body.to_string();
        call(self.addr, (method, path), Some(&self.admin), None, Some(&body))
    }

    fn service(&self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Answer {
        let body = body.map(|body| body.to_string());
        call(self.addr, (method, path), Some(&self.service), key, body.as_deref())
    }
}

fn start_http(dir: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["--http-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    start(dir, &args)
}

async fn quic_client(daemon: &Daemon, key: &str) -> Client {
    let tls = ClientTls::trust_pem_file(&daemon.cert).unwrap();
    let service = token(&daemon.tokens, "service");
    let config = ClientConfig::new(daemon.addr, "localhost", tls, Some(&service));
    Client::connect(config).await.unwrap().keyed(key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_item_checkout_over_http_with_the_same_tokens_keys_and_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_http(dir.path(), &[]);
    let api = Api::of(&daemon);
    for sku in [1, 2] {
        let set = api.admin("PUT", &format!("/v1/skus/{sku}/stock"), json!({"total": 10}));
        assert_eq!((set.status, &set.body["outcome"]), (200, &json!("stock_changed")), "{set:?}");
    }
    // SKU 2 is spread over both shards (docs/hot-skus.md): it still reads as one SKU.
    let spread = api.admin("PUT", "/v1/skus/2/buckets", json!({"buckets": 2}));
    assert_eq!((spread.status, &spread.body["outcome"]), (200, &json!("buckets_set")));
    let moves = series_value(&scrape(&daemon, "/metrics").body, "flashstock_bucket_moves_total");
    assert_eq!(moves, Some(1.0), "the spread moved half the stock to the other bucket");
    let again = api.admin("PUT", "/v1/skus/2/buckets", json!({"buckets": 3}));
    assert_eq!((again.status, &again.body["outcome"]), (409, &json!("invalid_buckets")));
    assert_eq!(api.service("GET", "/v1/skus/2", None, None).body["available"], json!(10));
    // A path no SKU id can have names an unknown SKU, as the document says (schemathesis
    // found it answered with the error body the document does not list for this route).
    let nowhere = api.admin("PUT", "/v1/skus/x%C2%84/buckets", json!({"buckets": 2}));
    assert_eq!((nowhere.status, &nowhere.body["outcome"]), (404, &json!("unknown_sku")));

    // A reserve retried with its key is one effect with one answer.
    let reserve = json!({"buyer": 7, "sku": 1, "qty": 2, "ttl_ms": 60_000});
    let first = api.service("POST", "/v1/reservations", Some("order-1"), Some(reserve.clone()));
    let again = api.service("POST", "/v1/reservations", Some("order-1"), Some(reserve));
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body, again.body, "the retry gets the first answer");
    let sku = api.service("GET", "/v1/skus/1", None, None);
    assert_eq!((sku.body["available"].clone(), sku.body["reserved"].clone()), (json!(8), json!(2)));

    // The key is the Rust client's key: the same call with it is the same request.
    let rust = quic_client(&daemon, "order-1").await;
    let outcome = rust.reserve(BuyerId(7), SkuId(1), 2, 60_000).await.unwrap();
    let Outcome::Reserved { reservation, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!(json!(reservation.0.to_string()), first.body["reservation"]);

    // A cart over both SKUs: held whole, confirmed whole, one line partly returned.
    let lines = json!([{"sku": 1, "qty": 1}, {"sku": 2, "qty": 3}]);
    let body = json!({"buyer": 8, "ttl_ms": 60_000, "lines": lines});
    let cart = api.service("POST", "/v1/carts", Some("order-2"), Some(body));
    assert_eq!((cart.status, &cart.body["outcome"]), (200, &json!("reserved")), "{cart:?}");
    let id = cart.body["reservation"].as_str().unwrap().to_owned();
    let confirmed = api.service("POST", &format!("/v1/reservations/{id}/confirm"), None, None);
    assert_eq!(confirmed.body, json!({"outcome": "confirmed"}));
    let view = api.service("GET", &format!("/v1/carts/{id}"), None, None);
    assert_eq!(
        (view.body["state"].clone(), view.body["lines"].clone()),
        (json!("confirmed"), lines)
    );
    let back = json!({"line": 1, "sku": 2, "qty": 1});
    let path = format!("/v1/reservations/{id}/returns");
    let returned = api.service("POST", &path, Some("refund-1"), Some(back.clone()));
    assert_eq!(returned.body, json!({"outcome": "returned", "returned_total": 1}));
    let twice = api.service("POST", &path, Some("refund-1"), Some(back));
    assert_eq!(twice.body, returned.body, "one return per key");
    let sku = rust.query_sku(SkuId(2)).await.unwrap().unwrap();
    assert_eq!((sku.available, sku.sold), (8, 2), "QUIC reads what HTTP did: {sku:?}");

    // Business outcomes are values with their names: sold out is 409, not an error.
    let greedy = json!({"buyer": 9, "sku": 2, "qty": 9, "ttl_ms": 1_000});
    let sold_out = api.service("POST", "/v1/reservations", None, Some(greedy));
    assert_eq!(
        (sold_out.status, sold_out.body.clone()),
        (409, json!({"outcome": "sold_out", "available": 8}))
    );
    let lines = json!([{"sku": 1, "qty": 1}, {"sku": 2, "qty": 9}]);
    let refused = api.service(
        "POST",
        "/v1/carts",
        None,
        Some(json!({"buyer": 9, "ttl_ms": 1_000, "lines": lines})),
    );
    let expected = json!({"outcome": "cart_refused", "line": 1, "refusal": "sold_out", "value": 8});
    assert_eq!((refused.status, refused.body), (409, expected));
    let unknown = api.service("POST", "/v1/reservations/999999/cancel", None, None);
    assert_eq!((unknown.status, unknown.body), (404, json!({"outcome": "unknown_reservation"})));
    terminate(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_http_calls_get_typed_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_http(dir.path(), &["--http-request-timeout-ms", "500"]);
    let api = Api::of(&daemon);
    api.admin("PUT", "/v1/skus/1/stock", json!({"total": 10}));
    let records =
        || series_value(&scrape(&daemon, "/metrics").body, "flashstock_wal_records_total");
    let before = records();
    let reserve = json!({"buyer": 7, "sku": 1, "qty": 2, "ttl_ms": 60_000}).to_string();
    let addr = api.addr;
    let post = ("POST", "/v1/reservations");
    let refusals: Vec<(Answer, u16, &str)> = vec![
        (call(addr, post, None, None, Some(&reserve)), 401, "unauthenticated"),
        (call(addr, post, Some("not-a-token"), None, Some(&reserve)), 401, "unauthenticated"),
        (call(addr, post, Some(&api.consumer), None, Some(&reserve)), 403, "permission_denied"),
        (
            call(
                addr,
                ("PUT", "/v1/skus/1/stock"),
                Some(&api.service),
                None,
                Some(r#"{"total":99}"#),
            ),
            403,
            "permission_denied",
        ),
        (call(addr, post, Some(&api.service), None, Some("{not json")), 400, "bad_request"),
        (call(addr, post, Some(&api.service), None, Some("[7, 1, 2, 60000]")), 400, "bad_request"),
        (
            call(
                addr,
                post,
                Some(&api.service),
                None,
                Some(r#"{"buyer":7,"sku":1,"qty":2,"ttl_ms":1,"x":1}"#),
            ),
            400,
            "bad_request",
        ),
        (
            call(
                addr,
                post,
                Some(&api.service),
                None,
                Some(r#"{"buyer":7,"sku":1,"qty":2.5,"ttl_ms":1}"#),
            ),
            400,
            "bad_request",
        ),
        (
            call(addr, post, Some(&api.service), Some(&"k".repeat(257)), Some(&reserve)),
            400,
            "invalid_idempotency_key",
        ),
        (
            call(addr, post, Some(&api.service), None, Some(&" ".repeat(20_000))),
            413,
            "payload_too_large",
        ),
        (call(addr, ("GET", "/v1/nothing"), Some(&api.service), None, None), 404, "not_found"),
        (
            call(addr, ("DELETE", "/v1/reservations"), Some(&api.service), None, None),
            405,
            "method_not_allowed",
        ),
    ];
    for (answer, status, error) in &refusals {
        assert_eq!(
            (answer.status, answer.body["error"].as_str()),
            (*status, Some(*error)),
            "{answer:?}"
        );
        assert_eq!(answer.header("content-type"), Some("application/json"));
    }
    assert_eq!(refusals[0].0.header("www-authenticate"), Some("Bearer"));
    assert_eq!(refusals[11].0.header("allow"), Some("POST"));
    assert_eq!(records(), before, "no refused call wrote to the log");
    let sku = api.service("GET", "/v1/skus/1", None, None);
    assert_eq!(
        (sku.body["available"].clone(), sku.body["reserved"].clone()),
        (json!(10), json!(0))
    );

    // A peer that sends half a head, or keeps a connection idle, is cut off at the timeout.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"POST /v1/reservations HTTP/1.1\r\nHost: te").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let started = std::time::Instant::now();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(5), "closed by the request timeout");
    let mut idle = TcpStream::connect(addr).unwrap();
    let get = format!(
        "GET /v1/skus/1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        api.service
    );
    idle.write_all(get.as_bytes()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answered = Vec::new();
    let started = std::time::Instant::now();
    let _ = idle.read_to_end(&mut answered);
    assert!(started.elapsed() < Duration::from_secs(5), "an idle keep-alive is closed");
    assert_eq!(parse(&answered).status, 200, "after its answer");

    // Everyone else is still served.
    let reserved = api.service(
        "POST",
        "/v1/reservations",
        None,
        Some(json!({"buyer": 1, "sku": 1, "qty": 1, "ttl_ms": 1_000})),
    );
    assert_eq!(reserved.status, 200, "{reserved:?}");
    terminate(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_http_calls_are_all_served_and_counted_in_shard_batches() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_http(dir.path(), &[]);
    let api = Api::of(&daemon);
    api.admin("PUT", "/v1/skus/1/stock", json!({"total": 1_000}));
    let calls = 64;
    let threads: Vec<_> = (0..calls)
        .map(|buyer| {
            let (addr, token) = (api.addr, api.service.clone());
            std::thread::spawn(move || {
                let body =
                    json!({"buyer": buyer, "sku": 1, "qty": 1, "ttl_ms": 60_000}).to_string();
                call(addr, ("POST", "/v1/reservations"), Some(&token), None, Some(&body)).status
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), 200);
    }
    let sku = api.service("GET", "/v1/skus/1", None, None);
    assert_eq!(sku.body["reserved"], json!(calls));
    let text = scrape(&daemon, "/metrics").body;
    let batches = series_value(&text, "flashstock_http_batch_requests_count").unwrap();
    let requests = series_value(&text, "flashstock_http_batch_requests_sum").unwrap();
    // 64 reserves, the set-stock and the SKU read.
    assert_eq!(requests, f64::from(calls + 2), "{text}");
    // How many of the calls overlapped, and so shared a batch, is the machine's scheduling
    // (seen: none, with the cores busy); `calls_queued_together_are_submitted_as_one_batch`
    // in coalesce.rs checks the coalescing itself.
    assert!((1.0..=requests).contains(&batches), "{batches} batches for {requests} calls");
    terminate(daemon);
}

#[test]
fn the_openapi_document_is_served_and_names_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_http(dir.path(), &[]);
    let document = call(daemon.http.unwrap(), ("GET", "/openapi.json"), None, None, None);
    assert_eq!(document.status, 200);
    let paths = document.body["paths"].as_object().unwrap();
    for path in [
        "/v1/reservations",
        "/v1/carts",
        "/v1/reservations/{id}",
        "/v1/reservations/{id}/confirm",
        "/v1/reservations/{id}/cancel",
        "/v1/reservations/{id}/returns",
        "/v1/carts/{id}",
        "/v1/skus/{sku}",
        "/v1/skus/{sku}/stock",
        "/v1/skus/{sku}/buckets",
    ] {
        assert!(paths.contains_key(path), "{path} is missing from {paths:?}");
    }
    let schemas = &document.body["components"]["schemas"];
    let qty = &schemas["ReserveBody"]["properties"]["qty"];
    assert_eq!(qty["maximum"], json!(flashstock_engine::RESERVE_QTY_MAX), "the engine's bound");
    let ttl = &schemas["ReserveBody"]["properties"]["ttl_ms"];
    assert_eq!(ttl["maximum"], json!(flashstock_engine::TTL_MS_MAX));
    let lines = &schemas["CartBody"]["properties"]["lines"];
    assert_eq!(lines["maxItems"], json!(flashstock_engine::CART_LINES_MAX));
    let total = &schemas["StockBody"]["properties"]["total"];
    assert_eq!(total["maximum"], json!(flashstock_engine::STOCK_TOTAL_MAX));
    let buckets = &schemas["BucketsBody"]["properties"]["buckets"];
    assert_eq!(buckets["maximum"], json!(flashstock_engine::BUCKETS_MAX));
    terminate(daemon);
}
