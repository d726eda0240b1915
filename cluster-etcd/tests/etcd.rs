//! Against the machine's etcd (127.0.0.1:2379; `.ci/run` starts it): the map's
//! compare-and-swap, the watch following map and membership changes, and member leases.

use std::time::Duration;

use flashstock_cluster::{Member, ServerId, Slot, SlotMap, SlotMove};
use flashstock_cluster_etcd::{
    abort_move, flip_move, read_map, read_move, start_move, store_map, ClusterWatch, EtcdConfig,
    EtcdError, Membership,
};

/// A cluster prefix of this test's own, so tests and runs do not see each other's keys.
fn config(test: &str) -> EtcdConfig {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let prefix = format!("/flashstock-test/{test}-{}-{}", std::process::id(), nanos.as_nanos());
    EtcdConfig::new(vec!["http://127.0.0.1:2379".into()], &prefix)
}

fn id(name: &str) -> ServerId {
    ServerId(name.to_owned())
}

fn member(port: u16) -> Member {
    Member {
        quic: format!("127.0.0.1:{port}").parse().unwrap(),
        server_name: "localhost".into(),
        http: None,
        shards: 2,
    }
}

#[tokio::test]
async fn the_map_changes_only_by_compare_and_swap_and_the_watch_follows_it() {
    let config = config("cas");
    assert_eq!(read_map(&config).await.unwrap(), None);
    let watch = ClusterWatch::start(config.clone()).await.unwrap();
    assert!(watch.view().map.is_none());

    let two = SlotMap::even(&[id("a"), id("b")]).unwrap();
    let first = store_map(&config, &two, 0).await.unwrap();
    // Storing against "no map" again is refused: someone stored one.
    let err = store_map(&config, &two, 0).await.unwrap_err();
    assert!(matches!(err, EtcdError::Conflict { expected: 0, found } if found == first), "{err}");
    assert!(watch.wait_for_map(first, Duration::from_secs(5)).await, "the watch saw the map");
    assert_eq!(watch.view().owner(Slot(0)), Some(&id("a")));
    assert_eq!(watch.view().owner(Slot(4095)), Some(&id("b")));

    let moved = two.with_range_moved(Slot(0), Slot(99), id("b")).unwrap();
    let second = store_map(&config, &moved, first).await.unwrap();
    let stale = store_map(&config, &two, first).await.unwrap_err();
    assert!(matches!(stale, EtcdError::Conflict { found, .. } if found == second), "{stale}");
    assert!(watch.wait_for_map(second, Duration::from_secs(5)).await);
    assert_eq!(watch.view().owner(Slot(50)), Some(&id("b")));
    assert_eq!(watch.view().owner(Slot(100)), Some(&id("a")));
    assert_eq!(read_map(&config).await.unwrap().unwrap().revision(), second);
}

#[tokio::test]
async fn members_come_with_their_lease_and_go_when_they_leave() {
    let config = config("members");
    let watch = ClusterWatch::start(config.clone()).await.unwrap();
    let mut views = watch.subscribe();
    let a = Membership::register(config.clone(), id("a"), member(7401)).await.unwrap();
    let b = Membership::register(config.clone(), id("b"), member(7402)).await.unwrap();
    let both = views.wait_for(|view| view.members.len() == 2);
    tokio::time::timeout(Duration::from_secs(5), both).await.unwrap().unwrap();
    assert_eq!(watch.view().members[&id("b")], member(7402));
    a.leave().await;
    let one = views.wait_for(|view| view.members.len() == 1);
    tokio::time::timeout(Duration::from_secs(5), one).await.unwrap().unwrap();
    assert!(watch.view().members.contains_key(&id("b")));
    // The id left is free again at once.
    let again = Membership::register(config.clone(), id("a"), member(7403)).await.unwrap();
    let back = views.wait_for(|view| view.members.get(&id("a")) == Some(&member(7403)));
    tokio::time::timeout(Duration::from_secs(5), back).await.unwrap().unwrap();
    drop((again, b));
}

#[tokio::test]
async fn a_live_servers_id_is_not_taken_by_another() {
    let config = config("taken");
    let _first = Membership::register(config.clone(), id("a"), member(7401)).await.unwrap();
    let started = std::time::Instant::now();
    let err = Membership::register(config.clone(), id("a"), member(7402)).await.unwrap_err();
    assert!(matches!(err, EtcdError::ServerIdTaken { ref server } if server == "a"), "{err}");
    // It waited out a lease's life first (a crashed server's entry would have lapsed).
    assert!(started.elapsed() >= Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_bad_stored_map_is_refused_by_name() {
    let config = config("bad");
    let mut client = config.connect().await.unwrap();
    client
        .put(config.map_key(), r#"{"ranges":[{"first":0,"last":10,"server":"a"}]}"#, None)
        .await
        .unwrap();
    let err = read_map(&config).await.unwrap_err();
    assert!(err.to_string().contains("slot 11 is owned by no server"), "{err}");
}

/// One move at a time; its flip stores the new map and removes the move in one transaction,
/// only against the map it started from; an abort removes it; the watch follows both.
#[tokio::test]
async fn a_slot_move_starts_once_and_flips_only_against_its_map() {
    let config = config("move");
    let two = SlotMap::even(&[id("a"), id("b")]).unwrap();
    let at = store_map(&config, &two, 0).await.unwrap();
    let watch = ClusterWatch::start(config.clone()).await.unwrap();
    let mut views = watch.subscribe();
    let moving = SlotMove { first: 0, last: 99, from: id("a"), to: id("b"), map_revision: at };
    start_move(&config, &moving).await.unwrap();
    let other = SlotMove { first: 200, last: 299, ..moving.clone() };
    let busy = start_move(&config, &other).await.unwrap_err();
    assert!(matches!(&busy, EtcdError::MoveInProgress(m) if **m == moving), "{busy}");
    let seen = views.wait_for(|view| view.moving.as_ref() == Some(&moving));
    tokio::time::timeout(Duration::from_secs(5), seen).await.unwrap().unwrap();
    assert_eq!(read_move(&config).await.unwrap(), Some(moving.clone()));

    // A flip against a map changed meanwhile is refused, and changes nothing.
    let stale = SlotMove { map_revision: at - 1, ..moving.clone() };
    let moved = two.with_range_moved(Slot(0), Slot(99), id("b")).unwrap();
    let err = flip_move(&config, &stale, &moved).await.unwrap_err();
    assert!(matches!(err, EtcdError::Conflict { found, .. } if found == at), "{err}");
    assert_eq!(read_move(&config).await.unwrap(), Some(moving.clone()));

    let flipped = flip_move(&config, &moving, &moved).await.unwrap();
    assert!(watch.wait_for_map(flipped, Duration::from_secs(5)).await);
    assert_eq!(watch.view().owner(Slot(50)), Some(&id("b")));
    assert_eq!(watch.view().moving, None);
    assert!(matches!(flip_move(&config, &moving, &moved).await, Err(EtcdError::Conflict { .. })));

    // An abort removes a move without touching the map.
    let back = SlotMove { from: id("b"), to: id("a"), map_revision: flipped, ..moving };
    start_move(&config, &back).await.unwrap();
    assert!(abort_move(&config).await.unwrap());
    assert!(!abort_move(&config).await.unwrap());
    let err = flip_move(&config, &back, &two).await.unwrap_err();
    assert!(matches!(err, EtcdError::NoMove), "{err}");
    assert_eq!(read_map(&config).await.unwrap().unwrap().revision(), flipped);
}
