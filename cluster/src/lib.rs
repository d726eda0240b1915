//! flashstock past one machine (docs/cluster.md): which server owns which SKU. Pure: the
//! etcd client, the servers and the clients drive these types; nothing here does IO.
//!
//! Map of the modules:
//! - [`slots`]: [`Slot`], [`slot_of`] and [`SLOT_COUNT`]: SKUs hash to 4,096 slots.
//! - [`map`]: [`SlotMap`], the ranges of slots each server owns, as stored in etcd, with the
//!   checks every stored map must pass and the change a slot move makes.
//! - [`view`]: [`ClusterView`], the map and the live [`Member`]s as read from etcd, and
//!   [`OwnedSlots`], the per-request check a server makes.
//! - [`moves`]: [`SlotMove`], the slot move in progress as stored in etcd.
//! - [`error`]: [`MapError`], what is wrong with a stored map or a change to it.

pub mod error;
pub mod map;
pub mod moves;
pub mod slots;
pub mod view;

pub use error::MapError;
pub use map::{ServerId, SlotMap, SlotRange};
pub use moves::{SlotMove, MOVE_BYTES_MAX};
pub use slots::{slot_of, Slot, SLOT_COUNT};
pub use view::{ClusterView, Member, OwnedSlots, MEMBER_BYTES_MAX};
