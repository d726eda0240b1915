//! The replication spike (issue 15, part 5; docs/replication.md). Modules:
//!
//! - `wire`: TCP frames and the client messages both prototypes answer;
//! - `disk`: a node's log on sled, with grouped `flush` + `fdatasync`;
//! - `app`: the replicated state, one flashstock shard (decide on the leader, replay elsewhere);
//! - `raft`: prototype (a), the shard log replicated with openraft;
//! - `standby`: prototype (b), a primary shipping to synchronous standbys, fenced by an etcd lease;
//! - `drive`: the load driver and audit.

mod app;
mod disk;
mod drive;
mod raft;
mod standby;
mod wire;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What every node of either prototype is given.
#[derive(Args)]
struct NodeArgs {
    #[arg(long)]
    id: u64,
    /// Every node's peer address, comma-separated; client port = peer port + 1.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one node of prototype (a), openraft.
    RaftNode {
        #[command(flatten)]
        node: NodeArgs,
        /// The shortest election timeout (the longest is twice it); openraft's default.
        #[arg(long, default_value_t = 150)]
        election_timeout_ms: u64,
        /// openraft's default.
        #[arg(long, default_value_t = 50)]
        heartbeat_ms: u64,
        /// Raft entries proposed and not yet committed, at most (0: no bound).
        #[arg(long, default_value_t = 0)]
        proposals_in_flight_max: usize,
    },
    /// Runs one node of prototype (b), a primary or standby fenced by an etcd lease.
    StandbyNode {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long, default_value = "http://127.0.0.1:2379")]
        etcd: String,
        /// The etcd key prefix of this group.
        #[arg(long, default_value = "/flashstock-spike")]
        prefix: String,
        /// The primary's lease: 1 s is the shortest the spike's etcd grants (run.sh).
        #[arg(long, default_value_t = 1)]
        lease_ttl_s: i64,
        /// How long the primary waits for a standby's ack before dropping it from the in-sync set.
        #[arg(long, default_value_t = 1000)]
        standby_timeout_ms: u64,
    },
    /// Drives checkout load at the nodes and audits them.
    Drive {
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Checkouts per call.
        #[arg(long, default_value_t = 16)]
        group: usize,
        #[arg(long, default_value_t = 30)]
        duration_s: u64,
        #[arg(long, default_value_t = 10_000)]
        skus: u64,
        #[arg(long, default_value_t = 1000)]
        call_timeout_ms: u64,
    },
    /// Prints the index of the node that leads (-1 if none says so).
    Leader {
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
    },
}

/// A node's client address: its peer address with the port one higher.
pub fn client_addr(peer: &str) -> String {
    let (host, port) = peer.rsplit_once(':').expect("address is host:port");
    let port: u16 = port.parse().expect("port is a number");
    format!("{host}:{}", port + 1)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::RaftNode { node, election_timeout_ms, heartbeat_ms, proposals_in_flight_max } => {
            let NodeArgs { id, peers, dir } = node;
            let settings = raft::NodeSettings {
                id,
                peers,
                dir,
                election_timeout_ms,
                heartbeat_ms,
                proposals_in_flight_max,
            };
            raft::run(settings).await
        }
        Command::StandbyNode { node, etcd, prefix, lease_ttl_s, standby_timeout_ms } => {
            let NodeArgs { id, peers, dir } = node;
            standby::run(standby::NodeSettings {
                id,
                peers,
                dir,
                etcd,
                prefix,
                lease_ttl_s,
                standby_timeout_ms,
            })
            .await
        }
        Command::Drive { nodes, workers, group, duration_s, skus, call_timeout_ms } => {
            drive::run(drive::DriveSettings {
                nodes,
                workers,
                group,
                duration_s,
                skus,
                call_timeout_ms,
            })
            .await
        }
        Command::Leader { nodes } => {
            drive::leader(&nodes).await;
            Ok(())
        }
    }
}
