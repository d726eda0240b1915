//! `flashstock cluster ...`: the cluster's map and members, read from and stored in etcd.

use flashstock_cluster::{ServerId, SlotMap};
use flashstock_cluster_etcd::{read_map, read_move, store_map, ClusterWatch, EtcdConfig};
use serde_json::{json, Value};

use crate::cli::ClusterCommand;
use crate::moves::{self, Access};
use crate::report::Report;
use crate::AdminError;

/// Runs a cluster command against `etcd`; a move reaches the servers with `access`.
pub async fn run(
    etcd: &EtcdConfig,
    command: &ClusterCommand,
    access: impl FnOnce() -> Result<Access, AdminError>,
) -> Result<Report, AdminError> {
    match command {
        ClusterCommand::Move { slots, to, pause_after } => {
            moves::start(etcd, &access()?, (slots, to), *pause_after).await
        }
        ClusterCommand::Resume { pause_after } => {
            moves::resume(etcd, &access()?, *pause_after).await
        }
        ClusterCommand::Abort => moves::abort(etcd).await,
        ClusterCommand::Show => show(etcd).await,
        ClusterCommand::Init { servers } => {
            let ids: Vec<ServerId> = servers.iter().map(|id| ServerId(id.clone())).collect();
            let map = SlotMap::even(&ids).map_err(flashstock_cluster_etcd::EtcdError::from)?;
            let revision = store_map(etcd, &map, 0).await?;
            let stored = SlotMap::parse(&map.to_json(), revision).expect("the map just checked");
            Ok(map_report(&stored, None).with_note(format!("stored at revision {revision}")))
        }
    }
}

async fn show(etcd: &EtcdConfig) -> Result<Report, AdminError> {
    let view = ClusterWatch::start(etcd.clone()).await?.view();
    let Some(map) = read_map(etcd).await? else {
        let report =
            Report::table(vec!["first", "last", "server", "address"], vec![], json!({"map": null}));
        return Ok(report.failed(format!("no shard map stored under {}", etcd.prefix)));
    };
    let report = map_report(&map, Some(&view));
    Ok(match read_move(etcd).await? {
        Some(m) => report.with_note(format!(
            "map revision {}; moving slots {}-{} from {} to {} (`cluster resume` or `cluster abort`)",
            map.revision(),
            m.first,
            m.last,
            m.from.0,
            m.to.0
        )),
        None => report,
    })
}

/// The map's ranges, each with its server's address when `view` has the member.
fn map_report(map: &SlotMap, view: Option<&flashstock_cluster::ClusterView>) -> Report {
    let address = |server: &ServerId| {
        view.and_then(|view| view.members.get(server)).map(|member| member.quic.to_string())
    };
    let rows = map
        .ranges()
        .iter()
        .map(|range| {
            // "-": members not read (init); "(not registered)": no live server of that id.
            let missing = if view.is_some() { "(not registered)" } else { "-" };
            let at = address(&range.server).unwrap_or_else(|| missing.into());
            vec![range.first.to_string(), range.last.to_string(), range.server.0.clone(), at]
        })
        .collect();
    let ranges: Vec<Value> = map
        .ranges()
        .iter()
        .map(|r| json!({"first": r.first, "last": r.last, "server": r.server.0, "address": address(&r.server)}))
        .collect();
    let json = json!({"revision": map.revision(), "ranges": ranges});
    Report::table(vec!["first", "last", "server", "address"], rows, json)
        .with_note(format!("map revision {}", map.revision()))
}
