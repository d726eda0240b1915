//! A client process for the idempotency-key test: it is killed mid-call, and a new process
//! retries the same call under the same key.
//!
//! `keyed-call <addr> <data_dir> <token> <key> cart <buyer> <sku>:<qty>[,<sku>:<qty>...]` or
//! `... <key> confirm <reservation>`. Prints `CONNECTED`, waits for a line on standard input
//! (so the test can stop the replies first), makes the call, and prints `ANSWER <outcome>`.

use std::io::{BufRead, Write};

use flashstock_client::{Client, ClientConfig, ServerFiles};
use flashstock_engine::{BuyerId, ReservationId, SkuId};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: keyed-call <addr> <data_dir> <token> <key> cart <buyer> <lines> \
                 | ... confirm <reservation>";
    let [_, addr, data_dir, token, key, op, rest @ ..] = args.as_slice() else {
        panic!("{usage}");
    };
    let tls = ServerFiles::new(data_dir).tls(None).expect("the server's certificate");
    let config =
        ClientConfig::new(addr.parse().expect("an address"), "localhost", tls, Some(token));
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio.block_on(async {
        let client = Client::connect(config).await.expect("connect");
        let keyed = client.keyed(key).expect("a valid key");
        say("CONNECTED");
        let mut go = String::new();
        std::io::stdin().lock().read_line(&mut go).expect("the go line");
        let outcome = match (op.as_str(), rest) {
            ("cart", [buyer, lines]) => {
                let lines: Vec<(SkuId, u32)> = lines
                    .split(',')
                    .map(|line| {
                        let (sku, qty) = line.split_once(':').expect("sku:qty");
                        (SkuId(sku.parse().unwrap()), qty.parse().unwrap())
                    })
                    .collect();
                keyed.reserve_cart(BuyerId(buyer.parse().unwrap()), &lines, 600_000).await
            }
            ("confirm", [reservation]) => {
                keyed.confirm(ReservationId(reservation.parse().unwrap())).await
            }
            _ => panic!("{usage}"),
        };
        say(&format!("ANSWER {:?}", outcome.expect("an answer")));
        client.close().await;
    });
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).expect("stdout");
}
