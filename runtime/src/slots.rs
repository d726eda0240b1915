//! Slot moves between servers (docs/cluster.md), the runtime's part: each step goes to every
//! shard actor as a job, is logged like any command, and is answered once durable.
//!
//! An export is computed once per shard and range (one pass over the shard, in one step, so
//! it is one consistent cut) and kept until the range is thawed or released: the pages an
//! operator's tool fetches are slices of that one cut. The range is frozen, so the cut stays
//! what the shard holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flashstock_engine::{EngineError, ShardId, SlotItem, SlotRange, SlotsStep};
use tokio::sync::oneshot;

use crate::actor::Job;
use crate::error::RuntimeError;
use crate::handle::Handle;

/// A slot job for one shard actor.
#[derive(Debug)]
pub(crate) enum SlotsJob {
    Step(SlotRange, SlotsStep),
    Export(SlotRange),
    Import(Vec<SlotItem>),
    Frozen,
}

/// What a slot job gave back.
#[derive(Debug)]
pub(crate) enum SlotsDone {
    Done,
    Items(Vec<SlotItem>),
    Frozen(Vec<SlotRange>),
}

/// Where a slot job's answer goes: the engine's refusal is the caller's to report.
pub(crate) type SlotsTo = oneshot::Sender<Result<Result<SlotsDone, EngineError>, RuntimeError>>;

/// One shard's export of one range: a consistent cut, shared by the pages read from it.
type Cut = Arc<Vec<SlotItem>>;

/// Exports kept for paging, by range and shard.
#[derive(Debug, Default)]
pub(crate) struct Exports {
    cuts: Mutex<HashMap<(SlotRange, u16), Cut>>,
}

impl Handle {
    async fn slots_job(&self, shard: u16, job: SlotsJob) -> Result<SlotsDone, RuntimeError> {
        let (reply, answer) = oneshot::channel();
        self.send_job(ShardId(shard), Job::Slots { job, reply })?;
        let done = answer.await.map_err(|_| RuntimeError::ShuttingDown)??;
        done.map_err(RuntimeError::Slots)
    }

    /// Freezes, thaws or releases `range` on every shard, durably. Thaw and release drop the
    /// range's kept exports.
    pub async fn slots_step(&self, range: SlotRange, step: SlotsStep) -> Result<(), RuntimeError> {
        if step != SlotsStep::Frozen {
            self.exports().cuts.lock().expect("exports lock").retain(|&(r, _), _| r != range);
        }
        for shard in 0..self.shard_map().shard_count() {
            self.slots_job(shard, SlotsJob::Step(range, step)).await?;
        }
        Ok(())
    }

    /// Items `offset..offset + limit` of what `shard` holds of the frozen `range`, and how
    /// many it holds in all.
    pub async fn export_slots(
        &self,
        range: SlotRange,
        shard: u16,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<SlotItem>, usize), RuntimeError> {
        if shard >= self.shard_map().shard_count() {
            return Err(RuntimeError::Slots(EngineError::Slots {
                first: range.first().0,
                last: range.last().0,
                detail: "no such shard here",
            }));
        }
        let kept = self.exports().cuts.lock().expect("exports lock").get(&(range, shard)).cloned();
        let cut = match kept {
            Some(cut) => cut,
            None => {
                let SlotsDone::Items(items) =
                    self.slots_job(shard, SlotsJob::Export(range)).await?
                else {
                    unreachable!("an export answers items")
                };
                let cut = Arc::new(items);
                let mut cuts = self.exports().cuts.lock().expect("exports lock");
                cuts.entry((range, shard)).or_insert(cut).clone()
            }
        };
        let page = cut.iter().skip(offset).take(limit).copied().collect();
        Ok((page, cut.len()))
    }

    /// Imports items of a frozen range into `shard`, durably, in chunks a step can take: all
    /// sent before any is awaited, so that they share the log's syncs (awaited one by one,
    /// a page of 8,192 items took ~130 ms under load, a sync per chunk).
    pub async fn import_slots(&self, shard: u16, items: Vec<SlotItem>) -> Result<(), RuntimeError> {
        let mut answers = Vec::new();
        for chunk in items.chunks(self.batch_jobs_max()) {
            let (reply, answer) = oneshot::channel();
            let job = SlotsJob::Import(chunk.to_vec());
            self.send_job(ShardId(shard), Job::Slots { job, reply })?;
            answers.push(answer);
        }
        for answer in answers {
            answer.await.map_err(|_| RuntimeError::ShuttingDown)??.map_err(RuntimeError::Slots)?;
        }
        Ok(())
    }

    /// The slot ranges frozen on any shard here (a crash between two shards' freezes may
    /// leave some frozen and not others; freezing again completes it).
    pub async fn frozen_ranges(&self) -> Result<Vec<SlotRange>, RuntimeError> {
        let mut all = Vec::new();
        for shard in 0..self.shard_map().shard_count() {
            match self.slots_job(shard, SlotsJob::Frozen).await? {
                SlotsDone::Frozen(ranges) => all.extend(ranges),
                other => unreachable!("a frozen-range query answered {other:?}"),
            }
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }
}
