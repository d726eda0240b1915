//! A multi-item checkout saga against a running flashstockd. A post links a look (a jacket,
//! a bag, a lipstick); each buyer checks out the whole look or nothing: hold the cart, take
//! the payment, then confirm, or cancel (compensate) when the payment fails. One buyer later
//! returns a lipstick (a refund after the sale).
//!
//! Every call of one order goes through a client keyed by the order's id, so an order
//! service that crashes and runs the same step again gets the first answer, not a second
//! effect.
//!
//! ```sh
//! cargo run --release -p flashstock-server --bin flashstockd &      # embedded defaults
//! cargo run --release -p flashstock-client --example checkout        # reads flashstock-data/
//! ```
//! Arguments (all optional): `[data dir] [server address]`.

use std::path::PathBuf;

use flashstock_client::{Client, ClientConfig, ClientError};
use flashstock_engine::{BuyerId, Outcome, SkuId};
use flashstock_protocol::Role;

const JACKET: SkuId = SkuId(4242);
const BAG: SkuId = SkuId(4243);
const LIPSTICK: SkuId = SkuId(4244);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data_dir = PathBuf::from(args.next().unwrap_or_else(|| "flashstock-data".into()));
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7400".into()).parse()?;
    let files = flashstock_client::ServerFiles::new(data_dir);
    let tls = files.tls(None)?;
    let token = |role| files.token(None, role, None);

    // The operator puts the look on sale: 3 jackets, 2 bags (one per buyer), 10 lipsticks.
    let admin = Client::connect(ClientConfig::new(
        addr,
        "localhost",
        tls.clone(),
        Some(&token(Role::Admin)?),
    ))
    .await?;
    for (sku, total) in [(JACKET, 3), (BAG, 2), (LIPSTICK, 10)] {
        admin.set_stock(sku, total).await?;
    }
    admin.set_buyer_limit(BAG, Some(1)).await?;

    // The order service checks out five buyers; every other payment fails.
    let orders =
        Client::connect(ClientConfig::new(addr, "localhost", tls, Some(&token(Role::Service)?)))
            .await?;
    for buyer in 1..=5u64 {
        let order = orders.keyed(&format!("order-{buyer}"))?;
        let paid = buyer % 2 == 1;
        println!("buyer {buyer}: {}", checkout(&order, BuyerId(buyer), paid).await?);
    }
    for sku in [JACKET, BAG, LIPSTICK] {
        let view = orders.query_sku(sku).await?.expect("the SKU");
        println!(
            "sku {}: total {}, available {}, reserved {}, sold {}",
            sku.0, view.total, view.available, view.reserved, view.sold
        );
    }
    Ok(())
}

/// One checkout of the whole look: hold it for 15 minutes, pay, then confirm or compensate.
/// Buyer 1 then returns one of its two lipsticks.
async fn checkout(order: &Client, buyer: BuyerId, paid: bool) -> Result<String, ClientError> {
    let look = [(JACKET, 1), (BAG, 1), (LIPSTICK, 2)];
    let cart = match order.reserve_cart(buyer, &look, 15 * 60 * 1000).await? {
        Outcome::Reserved { reservation, .. } => reservation,
        Outcome::CartRefused { line, refusal, value } => {
            let sku = look[usize::from(line)].0 .0;
            return Ok(format!("not held: line {line} (sku {sku}) {} ({value})", refusal.name()));
        }
        refused => return Ok(format!("not held: {refused:?}")),
    };
    if !paid {
        // Saga compensation: give the whole cart back at once rather than wait for its TTL.
        return Ok(format!("payment failed, {:?}", order.cancel(cart).await?));
    }
    // Confirm is idempotent: run again under the same order key, it returns the first answer.
    let confirmed = order.confirm(cart).await?;
    if buyer != BuyerId(1) {
        return Ok(format!("paid, {confirmed:?}"));
    }
    // A refund of one lipstick (line 2 of the cart), days later in real life.
    let refund = order.return_sold(cart, 2, LIPSTICK, 1).await?;
    Ok(format!("paid, {confirmed:?}; returned a lipstick: {refund:?}"))
}
