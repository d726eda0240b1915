//! The admin side of slot moves (docs/cluster.md): the steps an operator's tool drives on
//! the source and the target of a move. Items travel as the engine's own record encoding,
//! decoded and checked here before a shard sees them.

use flashstock_engine::{decode_records, Record, Slot, SlotItem, SlotRange, SlotsStep};
use flashstock_protocol::{AdminReply, AdminRequest, SlotsAction, SLOT_ITEMS_PAGE_MAX};
use flashstock_runtime::{Handle, RuntimeError};

use crate::net::session::refusal_of;

/// Answers a slot request (the caller checked the admin role).
pub(crate) async fn admin(handle: &Handle, request: AdminRequest) -> AdminReply {
    match answer(handle, request).await {
        Ok(reply) => reply,
        Err(RuntimeError::Slots(refused)) => AdminReply::Invalid { detail: refused.to_string() },
        Err(err) => AdminReply::Refused(refusal_of(err)),
    }
}

async fn answer(handle: &Handle, request: AdminRequest) -> Result<AdminReply, RuntimeError> {
    match request {
        AdminRequest::Slots { first, last, action } => {
            let Some(range) = range_of(first, last) else { return Ok(bad_range(first, last)) };
            let step = match action {
                SlotsAction::Freeze => SlotsStep::Frozen,
                SlotsAction::Thaw => SlotsStep::Thawed,
                SlotsAction::Release => SlotsStep::Released,
            };
            handle.slots_step(range, step).await?;
            Ok(AdminReply::SlotsDone)
        }
        AdminRequest::ExportSlots { first, last, shard, offset, limit } => {
            let Some(range) = range_of(first, last) else { return Ok(bad_range(first, last)) };
            let limit = limit.clamp(1, SLOT_ITEMS_PAGE_MAX) as usize;
            let offset = usize::try_from(offset).unwrap_or(usize::MAX);
            let (page, total) = handle.export_slots(range, shard, offset, limit).await?;
            let mut items = Vec::with_capacity(page.len() * 48);
            for item in &page {
                Record::SlotImported { at_ms: 0, item: Box::new(*item) }.encode(&mut items);
            }
            Ok(AdminReply::SlotItems { items, count: page.len() as u32, total: total as u64 })
        }
        AdminRequest::ImportSlots { shard, items } => match decode_items(&items) {
            Ok(items) => {
                handle.import_slots(shard, items).await?;
                Ok(AdminReply::SlotsDone)
            }
            Err(detail) => Ok(AdminReply::Invalid { detail }),
        },
        AdminRequest::SlotsStatus => {
            let frozen = handle.frozen_ranges().await?;
            let frozen = frozen.iter().map(|r| (r.first().0, r.last().0)).collect();
            Ok(AdminReply::SlotsStatus { frozen, shards: handle.shard_map().shard_count() })
        }
        other => unreachable!("{other:?} is not a slot request"),
    }
}

fn range_of(first: u16, last: u16) -> Option<SlotRange> {
    SlotRange::new(Slot(first), Slot(last))
}

fn bad_range(first: u16, last: u16) -> AdminReply {
    let detail = format!("slots {first}-{last}: a range is first <= last < 4096");
    AdminReply::Invalid { detail }
}

/// The items of an import: only `SlotImported` records, at most a page of them.
fn decode_items(bytes: &[u8]) -> Result<Vec<SlotItem>, String> {
    let mut items = Vec::new();
    for record in decode_records(bytes) {
        match record.map_err(|err| format!("slot items: {err}"))? {
            Record::SlotImported { item, .. } => items.push(*item),
            other => return Err(format!("slot items: not an item: {other:?}")),
        }
        if items.len() > SLOT_ITEMS_PAGE_MAX as usize {
            return Err(format!("slot items: more than {SLOT_ITEMS_PAGE_MAX} in one request"));
        }
    }
    Ok(items)
}
