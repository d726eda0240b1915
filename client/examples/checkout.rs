//! A checkout saga against a running flashstockd: reserve, take the payment, then confirm, or
//! cancel (compensate) when the payment fails.
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data_dir = PathBuf::from(args.next().unwrap_or_else(|| "flashstock-data".into()));
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7400".into()).parse()?;
    let files = flashstock_client::ServerFiles::new(data_dir);
    let tls = files.tls(None)?;
    let token = |role| files.token(None, role, None);

    // The operator puts 3 units of SKU 4242 on sale.
    let admin = Client::connect(ClientConfig::new(
        addr,
        "localhost",
        tls.clone(),
        Some(&token(Role::Admin)?),
    ))
    .await?;
    admin.set_stock(SkuId(4242), 3).await?;
    admin.set_buyer_limit(SkuId(4242), Some(1)).await?;

    // The order service checks out five buyers; every other payment fails.
    let orders =
        Client::connect(ClientConfig::new(addr, "localhost", tls, Some(&token(Role::Service)?)))
            .await?;
    for buyer in 1..=5u64 {
        let paid = buyer % 2 == 1;
        println!("buyer {buyer}: {}", checkout(&orders, BuyerId(buyer), SkuId(4242), paid).await?);
    }
    let view = orders.query_sku(SkuId(4242)).await?.expect("the SKU");
    println!(
        "sku 4242: total {}, available {}, reserved {}, sold {}",
        view.total, view.available, view.reserved, view.sold
    );
    Ok(())
}

/// One checkout: hold a unit for 15 minutes, pay, then confirm or compensate.
async fn checkout(
    client: &Client,
    buyer: BuyerId,
    sku: SkuId,
    payment_succeeds: bool,
) -> Result<String, ClientError> {
    let reservation = match client.reserve(buyer, sku, 1, 15 * 60 * 1000).await? {
        Outcome::Reserved { reservation, .. } => reservation,
        refused => return Ok(format!("not reserved: {refused:?}")),
    };
    if payment_succeeds {
        // Confirm is idempotent: a retry after a timeout returns the first answer.
        Ok(format!("paid, {:?}", client.confirm(reservation).await?))
    } else {
        // Saga compensation: give the unit back at once rather than wait for the hold to lapse.
        Ok(format!("payment failed, {:?}", client.cancel(reservation).await?))
    }
}
