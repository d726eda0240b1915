//! The shard map's rules: every stored map gives every slot to exactly one server, lookups
//! agree with the ranges, and a slot move changes the owners of the moved slots only.

use flashstock_cluster::{MapError, ServerId, Slot, SlotMap, SLOT_COUNT};
use proptest::prelude::*;

fn server(name: &str) -> ServerId {
    ServerId(name.to_owned())
}

/// A map of `cuts` boundaries with owners drawn from three servers.
fn map_of(cuts: &[u16], owners: &[u8]) -> SlotMap {
    let mut bounds: Vec<u16> = cuts.iter().map(|c| c % SLOT_COUNT).filter(|&c| c > 0).collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut ranges = Vec::new();
    let mut first = 0;
    for (index, &bound) in bounds.iter().chain([SLOT_COUNT].iter()).enumerate() {
        let name = ["a", "b", "c"][usize::from(owners[index % owners.len()] % 3)];
        ranges.push(format!(r#"{{"first":{first},"last":{},"server":"{name}"}}"#, bound - 1));
        first = bound;
    }
    let json = format!(r#"{{"ranges":[{}]}}"#, ranges.join(","));
    SlotMap::parse(json.as_bytes(), 7).unwrap()
}

proptest! {
    #[test]
    fn the_owner_of_every_slot_is_the_range_holding_it_and_survives_a_round_trip(
        cuts in proptest::collection::vec(any::<u16>(), 0..12),
        owners in proptest::collection::vec(any::<u8>(), 1..13),
    ) {
        let map = map_of(&cuts, &owners);
        for slot in 0..SLOT_COUNT {
            let holding = map.ranges().iter().find(|r| r.first <= slot && slot <= r.last).unwrap();
            prop_assert_eq!(map.owner(Slot(slot)), &holding.server);
        }
        prop_assert_eq!(SlotMap::parse(&map.to_json(), 7).unwrap(), map);
    }

    #[test]
    fn a_move_gives_the_moved_slots_to_the_target_and_no_other_slot_changes_owner(
        cuts in proptest::collection::vec(any::<u16>(), 0..12),
        owners in proptest::collection::vec(any::<u8>(), 1..13),
        (a, b) in (0..SLOT_COUNT, 0..SLOT_COUNT),
    ) {
        let map = map_of(&cuts, &owners);
        let (first, last) = (a.min(b), a.max(b));
        let moved = map.with_range_moved(Slot(first), Slot(last), server("d")).unwrap();
        for slot in 0..SLOT_COUNT {
            let expected = if (first..=last).contains(&slot) { server("d") } else { map.owner(Slot(slot)).clone() };
            prop_assert_eq!(moved.owner(Slot(slot)), &expected);
        }
        prop_assert_eq!(moved.revision(), map.revision());
    }
}

#[test]
fn a_stored_map_with_a_gap_an_overlap_or_a_bad_range_is_refused_by_name() {
    let parse = |json: &str| SlotMap::parse(json.as_bytes(), 1);
    let gap =
        r#"{"ranges":[{"first":0,"last":9,"server":"a"},{"first":11,"last":4095,"server":"b"}]}"#;
    assert_eq!(parse(gap), Err(MapError::Gap { slot: 10 }));
    let short = r#"{"ranges":[{"first":0,"last":4000,"server":"a"}]}"#;
    assert_eq!(parse(short), Err(MapError::Gap { slot: 4001 }));
    let overlap =
        r#"{"ranges":[{"first":0,"last":10,"server":"a"},{"first":10,"last":4095,"server":"b"}]}"#;
    assert_eq!(parse(overlap), Err(MapError::Overlap { slot: 10 }));
    let past = r#"{"ranges":[{"first":0,"last":4096,"server":"a"}]}"#;
    assert_eq!(parse(past), Err(MapError::BadRange { first: 0, last: 4096 }));
    let nameless = r#"{"ranges":[{"first":0,"last":4095,"server":""}]}"#;
    assert_eq!(parse(nameless), Err(MapError::BadServer(server(""))));
    assert!(matches!(parse(r#"{"ranges":[],"x":1}"#), Err(MapError::Malformed(_))));
    assert!(matches!(parse("[1,2]"), Err(MapError::Malformed(_))));
    // Adjacent ranges of one server are one range.
    let split =
        r#"{"ranges":[{"first":0,"last":9,"server":"a"},{"first":10,"last":4095,"server":"a"}]}"#;
    assert_eq!(parse(split).unwrap().ranges().len(), 1);
    assert_eq!(SlotMap::single(server("a")).unwrap().servers().len(), 1);
}
