//! The standby side of shipping, and the messages between a primary and a standby.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::log::Entry;
use super::{Node, Role};
use crate::wire;

#[derive(Debug, Serialize, Deserialize)]
pub enum ToStandby {
    /// A primary of `epoch` asks where the standby's log stands.
    Hello { epoch: u64, primary: u64 },
    /// It will ship from `from`: the standby cuts its log there and takes the epoch.
    Start { epoch: u64, primary: u64, from: u64 },
    /// Entries from `first_index` on, each with the epoch that wrote it.
    Append { epoch: u64, first_index: u64, entries: Vec<Entry> },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToPrimary {
    /// The standby's log: where each epoch starts, and its last index.
    Log { boundaries: Vec<(u64, u64)>, last_index: u64 },
    /// The standby holds a newer epoch (or is fenced for a campaign): the sender is deposed.
    Refused { epoch: u64 },
    /// Everything up to `index` is on the standby's disk.
    Ack { index: u64 },
}

pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve_primary(stream, node.clone()));
    }
}

async fn serve_primary(stream: TcpStream, node: Arc<Node>) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (replies, mut outbox) = mpsc::unbounded_channel::<ToPrimary>();
    tokio::spawn(async move {
        while let Some(reply) = outbox.recv().await {
            if wire::write(&mut writer, &reply).await.is_err() {
                return;
            }
        }
    });
    while let Ok(message) = wire::read::<ToStandby>(&mut reader).await {
        let reply = match message {
            ToStandby::Hello { epoch, .. } => {
                let state = node.log.lock();
                if epoch < state.epoch {
                    ToPrimary::Refused { epoch: state.epoch }
                } else {
                    ToPrimary::Log {
                        boundaries: state.boundaries.clone(),
                        last_index: state.last_index,
                    }
                }
            }
            ToStandby::Start { epoch, primary, from } => match node.log.start(epoch, from) {
                Ok(()) => {
                    if !matches!(node.role(), Role::Primary { .. }) {
                        *node.role.lock().unwrap_or_else(|p| p.into_inner()) =
                            Role::Standby { primary: Some(primary) };
                    }
                    // What the log holds up to the start is the primary's too: say so at once,
                    // or a new primary whose first groups are all retries (no new entry) would
                    // wait for an ack that no append ever asks for.
                    let replies = replies.clone();
                    node.log.disk.after_sync(move |synced| {
                        if synced.is_ok() {
                            let _ = replies.send(ToPrimary::Ack { index: from - 1 });
                        }
                    });
                    continue;
                }
                Err(epoch) => ToPrimary::Refused { epoch },
            },
            ToStandby::Append { epoch, first_index, entries } => {
                match node.log.accept(epoch, first_index, &entries) {
                    Ok(last) => {
                        let replies = replies.clone();
                        node.log.disk.after_sync(move |synced| {
                            if synced.is_ok() {
                                let _ = replies.send(ToPrimary::Ack { index: last });
                            }
                        });
                        continue;
                    }
                    Err(epoch) => ToPrimary::Refused { epoch },
                }
            }
        };
        let refused = matches!(reply, ToPrimary::Refused { .. });
        let _ = replies.send(reply);
        if refused {
            return;
        }
    }
}
