//! Each command against the server. Changes go through the client library with a fresh
//! request id (or one derived from `--key`), so a retry after a lost connection is applied
//! once.

use std::time::{Duration, Instant};

use flashstock_client::{Client, ClientConfig, ServerFiles};
use flashstock_engine::{Outcome, ReservationId, SaleWindow, SkuId, SkuView};
use flashstock_protocol::{RateLimit, RateLimitEntry, Role, SKU_PAGE_MAX};
use serde_json::{json, Value};

use crate::cli::{
    Cli, Command, ConsumerCommand, LimitCommand, RateLimitCommand, ReservationCommand, SkuCommand,
    WindowCommand,
};
use crate::moves::Access;
use crate::report::{cell, Report};
use crate::AdminError;

/// How long `health` waits for the metrics listener.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `cli`'s command and says what the server answered.
pub async fn run(cli: &Cli) -> Result<Report, AdminError> {
    let access = || {
        let files = ServerFiles::new(&cli.server.server_data_dir);
        let tls = files.tls(cli.server.cert.as_deref())?;
        let token = files.token(cli.server.token.as_deref(), Role::Admin, None)?;
        Ok::<_, AdminError>(Access { tls, token })
    };
    if let Command::Cluster(command) = &cli.command {
        return crate::cluster::run(&etcd_of(cli)?, command, access).await;
    }
    let Access { tls, token } = access()?;
    let config = match cli.server.etcd {
        Some(_) => ClientConfig::cluster(etcd_of(cli)?, tls, Some(&token)),
        None => ClientConfig::new(cli.server.server, &cli.server.server_name, tls, Some(&token)),
    };
    if let Command::Health = cli.command {
        return Ok(health(config, cli).await);
    }
    let connected = Client::connect(config).await?;
    let client = match &cli.key {
        Some(key) => connected.keyed(key)?,
        None => connected.clone(),
    };
    let report = match &cli.command {
        Command::Sku(command) => sku(&client, command).await,
        Command::Reservation(ReservationCommand::Get { reservation }) => {
            let id = ReservationId(*reservation);
            let view = client.query_reservation(id).await;
            view.map(|view| reservation_report(view, *reservation)).map_err(AdminError::from)
        }
        Command::Consumer(command) => consumer(&client, command).await,
        Command::RateLimit(command) => rate_limit(&client, command).await,
        Command::Health | Command::Cluster(_) => unreachable!("answered above"),
    };
    // Closed whatever the answer: the server frees the connection's place at once.
    client.close().await;
    report
}

/// The cluster named by --etcd and --cluster-prefix.
fn etcd_of(cli: &Cli) -> Result<flashstock_client::EtcdConfig, AdminError> {
    let urls = cli.server.etcd.as_deref().unwrap_or_default();
    flashstock_client::EtcdConfig::from_urls(urls, &cli.server.cluster_prefix)
        .ok_or_else(|| AdminError::Usage("cluster commands need --etcd URL".into()))
}

async fn sku(client: &Client, command: &SkuCommand) -> Result<Report, AdminError> {
    let outcome = match *command {
        SkuCommand::Get { sku } => {
            let view = client.query_sku(SkuId(sku)).await?;
            let report = skus_report(view.as_slice(), None);
            return Ok(match view {
                Some(_) => report,
                None => report.failed(format!("no SKU {sku}")),
            });
        }
        SkuCommand::List { after, limit, all } => return list(client, after, limit, all).await,
        SkuCommand::Set { sku, total } => client.set_stock(SkuId(sku), total).await?,
        SkuCommand::Adjust { sku, delta } => client.adjust_stock(SkuId(sku), delta).await?,
        SkuCommand::Limit(LimitCommand::Set { sku, limit }) => {
            client.set_buyer_limit(SkuId(sku), Some(limit)).await?
        }
        SkuCommand::Limit(LimitCommand::Clear { sku }) => {
            client.set_buyer_limit(SkuId(sku), None).await?
        }
        SkuCommand::Window(WindowCommand::Set { sku, opens_at_ms, closes_at_ms }) => {
            let window = SaleWindow { opens_at_ms, closes_at_ms };
            client.set_sale_window(SkuId(sku), window).await?
        }
        SkuCommand::Window(WindowCommand::Clear { sku }) => {
            let window = SaleWindow { opens_at_ms: None, closes_at_ms: None };
            client.set_sale_window(SkuId(sku), window).await?
        }
        SkuCommand::Spread { sku, buckets } => client.set_buckets(SkuId(sku), buckets).await?,
    };
    Ok(outcome_report(&outcome))
}

async fn list(
    client: &Client,
    after: Option<u64>,
    limit: u32,
    all: bool,
) -> Result<Report, AdminError> {
    if limit == 0 {
        return Err(AdminError::Usage("--limit must be at least 1".to_owned()));
    }
    let mut skus = Vec::new();
    let mut after = after.map(SkuId);
    loop {
        let page_limit = if all { SKU_PAGE_MAX } else { limit };
        let (page, next_after) = client.list_skus_page(after, page_limit).await?;
        skus.extend(page);
        after = next_after;
        if !all || after.is_none() {
            break;
        }
    }
    Ok(skus_report(&skus, after))
}

fn skus_report(skus: &[SkuView], next_after: Option<SkuId>) -> Report {
    let columns =
        vec!["sku", "total", "available", "reserved", "sold", "limit", "opens_ms", "closes_ms"];
    let rows = skus
        .iter()
        .map(|view| {
            vec![
                view.sku.0.to_string(),
                view.total.to_string(),
                view.available.to_string(),
                view.reserved.to_string(),
                view.sold.to_string(),
                cell(view.buyer_limit),
                cell(view.window.opens_at_ms),
                cell(view.window.closes_at_ms),
            ]
        })
        .collect();
    let json_skus: Vec<Value> = skus
        .iter()
        .map(|view| {
            json!({
                "sku": view.sku.0, "total": view.total, "available": view.available,
                "reserved": view.reserved, "sold": view.sold, "buyer_limit": view.buyer_limit,
                "opens_at_ms": view.window.opens_at_ms, "closes_at_ms": view.window.closes_at_ms,
            })
        })
        .collect();
    let json = json!({ "skus": json_skus, "next_after": next_after.map(|sku| sku.0) });
    let report = Report::table(columns, rows, json);
    match next_after {
        Some(sku) => report.with_note(format!("more after {} (--after {})", sku.0, sku.0)),
        None => report,
    }
}

/// A change's outcome: a success, or a refusal (exit status 1) with the engine's reason.
fn outcome_report(outcome: &Outcome) -> Report {
    let ok = matches!(
        outcome,
        Outcome::StockChanged { .. }
            | Outcome::LimitSet
            | Outcome::WindowSet
            | Outcome::BucketsSet { .. }
    );
    let detail = format!("{outcome:?}");
    let json = json!({ "outcome": outcome.name(), "ok": ok, "detail": detail });
    let report =
        Report::table(vec!["outcome", "detail"], vec![vec![outcome.name().into(), detail]], json);
    if ok {
        report
    } else {
        report.failed(format!("refused: {}", outcome.name()))
    }
}

fn reservation_report(view: Option<flashstock_engine::ReservationView>, id: u64) -> Report {
    let columns = vec!["reservation", "buyer", "sku", "qty", "state", "expires_at_ms"];
    let Some(view) = view else {
        let json = json!({ "reservation": null });
        return Report::table(columns, Vec::new(), json).failed(format!("no reservation {id}"));
    };
    let row = vec![
        view.reservation.0.to_string(),
        view.buyer.0.to_string(),
        view.sku.0.to_string(),
        view.qty.to_string(),
        view.state.name().to_owned(),
        view.expires_at_ms.to_string(),
    ];
    let json = json!({ "reservation": {
        "reservation": view.reservation.0, "buyer": view.buyer.0, "sku": view.sku.0,
        "qty": view.qty, "state": view.state.name(), "expires_at_ms": view.expires_at_ms,
    }});
    Report::table(columns, vec![row], json)
}

async fn consumer(client: &Client, command: &ConsumerCommand) -> Result<Report, AdminError> {
    match command {
        ConsumerCommand::List => {
            let consumers = client.list_consumers().await?;
            let rows = consumers
                .iter()
                .map(|c| {
                    let acked: Vec<String> = c.acked.iter().map(u64::to_string).collect();
                    vec![c.name.clone(), c.subscribed.to_string(), acked.join(",")]
                })
                .collect();
            let json: Vec<Value> = consumers
                .iter()
                .map(|c| json!({"name": c.name, "subscribed": c.subscribed, "acked": c.acked}))
                .collect();
            let columns = vec!["consumer", "subscribed", "acked (per shard)"];
            Ok(Report::table(columns, rows, json!({ "consumers": json })))
        }
        ConsumerCommand::Remove { name } => {
            let existed = client.remove_consumer(name).await?;
            let json = json!({ "consumer": name, "removed": existed });
            let rows = vec![vec![name.clone(), existed.to_string()]];
            let report = Report::table(vec!["consumer", "removed"], rows, json);
            Ok(if existed { report } else { report.failed(format!("no consumer {name:?}")) })
        }
    }
}

async fn rate_limit(client: &Client, command: &RateLimitCommand) -> Result<Report, AdminError> {
    let entries = match *command {
        RateLimitCommand::List => client.list_rate_limits().await?,
        RateLimitCommand::Set { sku, per_buyer_per_s, per_credential_per_s } => {
            let limit = RateLimit { per_buyer_per_s, per_credential_per_s };
            match client.set_rate_limit(sku.map(SkuId), limit).await {
                Ok(entries) => entries,
                Err(flashstock_client::ClientError::Invalid(detail)) => {
                    let json = json!({ "error": detail });
                    return Ok(Report::table(Vec::new(), Vec::new(), json)
                        .failed(format!("refused: {detail}")));
                }
                Err(err) => return Err(err.into()),
            }
        }
    };
    let scope = |entry: &RateLimitEntry| entry.sku.map_or("global".to_owned(), |s| s.0.to_string());
    let rows = entries
        .iter()
        .map(|entry| {
            vec![
                scope(entry),
                cell(entry.limit.per_buyer_per_s),
                cell(entry.limit.per_credential_per_s),
            ]
        })
        .collect();
    let json: Vec<Value> = entries
        .iter()
        .map(|entry| {
            json!({
                "sku": entry.sku.map(|sku| sku.0),
                "per_buyer_per_s": entry.limit.per_buyer_per_s,
                "per_credential_per_s": entry.limit.per_credential_per_s,
            })
        })
        .collect();
    let columns = vec!["scope", "per_buyer_per_s", "per_credential_per_s"];
    Ok(Report::table(columns, rows, json!({ "rate_limits": json })))
}

/// QUIC: connects and reads a SKU (a round trip through a shard); HTTP: `/readyz`.
async fn health(config: ClientConfig, cli: &Cli) -> Report {
    let started = Instant::now();
    let quic = match Client::connect(config).await {
        Ok(client) => {
            let answered = client.query_sku(SkuId(0)).await.map(|_| started.elapsed());
            client.close().await;
            answered.map_err(|err| err.to_string())
        }
        Err(err) => Err(err.to_string()),
    };
    let metrics = cli.server.metrics;
    let ready = tokio::task::spawn_blocking(move || {
        flashstock_observe::fetch(metrics, "/readyz", HEALTH_TIMEOUT)
    })
    .await
    .expect("the fetch does not panic");
    let mut rows = vec![vec![
        "quic".to_owned(),
        match &quic {
            Ok(elapsed) => {
                format!("ok ({:.1} ms to connect and read)", elapsed.as_secs_f64() * 1e3)
            }
            Err(err) => format!("failed: {err}"),
        },
    ]];
    let (ready_ok, ready_json) = match &ready {
        Ok(fetched) => {
            rows.extend(
                fetched.body.lines().map(|line| vec!["readyz".to_owned(), line.to_owned()]),
            );
            (fetched.status == 200, json!({"status": fetched.status, "body": fetched.body}))
        }
        Err(err) => {
            rows.push(vec!["readyz".to_owned(), format!("unreachable at {metrics}: {err}")]);
            (false, json!({"error": err.to_string()}))
        }
    };
    let quic_json = match &quic {
        Ok(elapsed) => json!({"ok": true, "ms": elapsed.as_secs_f64() * 1e3}),
        Err(err) => json!({"ok": false, "error": err}),
    };
    let ok = quic.is_ok() && ready_ok;
    let json = json!({"ok": ok, "quic": quic_json, "readyz": ready_json});
    let report = Report::table(vec!["check", "result"], rows, json);
    if ok {
        report.with_note("healthy".to_owned())
    } else {
        report.failed("unhealthy".to_owned())
    }
}
