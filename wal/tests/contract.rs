//! The `Wal` contract, checked against both implementations, then sled-specific checks.

use flashstock_wal::{MemWal, SledWal, SledWalConfig, Wal, WalError, BATCH_RECORDS_BYTES_MAX};

/// Appends `count` batches of three 10-byte records to `log`, starting at `first_seq`.
fn append_batches(wal: &impl Wal, log: u16, first_seq: u64, count: u64) {
    for batch in 0..count {
        let seq = first_seq + batch * 3;
        let records: Vec<u8> = (0..30).map(|i| (seq as u8).wrapping_add(i)).collect();
        wal.append(log, seq, 3, &records).unwrap();
    }
    wal.sync().unwrap();
}

fn replayed(wal: &impl Wal, log: u16, from_seq: u64) -> Result<Vec<(u64, Vec<u8>)>, WalError> {
    let mut seen = Vec::new();
    wal.replay(log, from_seq, &mut |batch| {
        seen.push((batch.first_seq, batch.records.to_vec()));
        Ok(())
    })?;
    Ok(seen)
}

fn read(
    wal: &impl Wal,
    log: u16,
    from_seq: u64,
    until_seq: u64,
    batches_max: usize,
) -> Result<Vec<u64>, WalError> {
    let mut seen = Vec::new();
    wal.read(log, from_seq, until_seq, &mut |batch| {
        seen.push(batch.first_seq);
        seen.len() < batches_max
    })?;
    Ok(seen)
}

fn contract(wal: impl Wal) {
    append_batches(&wal, 0, 0, 4);
    append_batches(&wal, 1, 0, 2);

    // A reader starts at the batch holding its first record, stops at `until_seq` or when the
    // visitor says so, and reads nothing for an empty range.
    assert_eq!(read(&wal, 0, 4, 12, 10).unwrap(), vec![3, 6, 9]);
    assert_eq!(read(&wal, 0, 3, 9, 10).unwrap(), vec![3, 6]);
    assert_eq!(read(&wal, 0, 0, 12, 2).unwrap(), vec![0, 3]);
    assert_eq!(read(&wal, 0, 12, 12, 10).unwrap(), Vec::<u64>::new());
    let batches = replayed(&wal, 0, 0).unwrap();
    assert_eq!(batches.iter().map(|b| b.0).collect::<Vec<_>>(), vec![0, 3, 6, 9]);
    assert_eq!(batches[1].1[0], 3, "records come back as written");
    assert_eq!(replayed(&wal, 1, 0).unwrap().len(), 2, "logs are separate");

    // Appends must be contiguous.
    let err = wal.append(0, 13, 1, b"x").unwrap_err();
    assert!(matches!(err, WalError::OutOfOrder { log: 0, expected: 12, found: 13 }), "{err}");
    let too_big = vec![0u8; BATCH_RECORDS_BYTES_MAX + 1];
    assert!(matches!(wal.append(0, 12, 1, &too_big), Err(WalError::BatchTooLarge { .. })));

    // Snapshot at 6, truncate below it: replay from 6 sees the rest, nothing below survives.
    wal.write_snapshot(0, 6, b"state at six").unwrap();
    wal.truncate_below(0, 6).unwrap();
    let snapshot = wal.latest_snapshot(0).unwrap().unwrap();
    assert_eq!((snapshot.seq, snapshot.state.as_slice()), (6, &b"state at six"[..]));
    assert_eq!(replayed(&wal, 0, 6).unwrap().iter().map(|b| b.0).collect::<Vec<_>>(), vec![6, 9]);
    assert_eq!(
        replayed(&wal, 0, 0).unwrap_err().to_string(),
        "log 0: records missing, expected a batch at 0, found one at 6"
    );
    assert_eq!(wal.latest_snapshot(1).unwrap(), None);

    // A reader asking for truncated records is told where the log now starts.
    let err = read(&wal, 0, 2, 12, 10).unwrap_err();
    assert!(
        matches!(err, WalError::Truncated { log: 0, requested: 2, first_available: 6 }),
        "{err}"
    );
    assert_eq!(read(&wal, 0, 7, 12, 10).unwrap(), vec![6, 9]);

    // Truncation never removes a batch that holds a record at or above the bound.
    wal.truncate_below(0, 10).unwrap();
    assert_eq!(replayed(&wal, 0, 9).unwrap().len(), 1);

    // A visitor's refusal stops the replay with the batch named.
    let err = wal.replay(0, 9, &mut |_| Err("does not fit".into())).unwrap_err();
    assert_eq!(err.to_string(), "log 0: replay of the batch at record 9 failed: does not fit");

    wal.write_meta("shard_count", &[2, 0]).unwrap();
    assert_eq!(wal.read_meta("shard_count").unwrap(), Some(vec![2, 0]));
    assert_eq!(wal.read_meta("absent").unwrap(), None);
}

#[test]
fn memory_log_keeps_the_contract() {
    contract(MemWal::new());
}

#[test]
fn sled_log_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(SledWal::open(&SledWalConfig::new(dir.path())).unwrap());
}

#[test]
fn memory_log_faults_are_caught_by_replay() {
    let wal = MemWal::new();
    append_batches(&wal, 0, 0, 3);
    wal.append(0, 9, 3, &[1; 30]).unwrap();
    wal.lose_unsynced();
    assert_eq!(wal.batch_seqs(0), vec![0, 3, 6], "the unsynced batch is lost");

    wal.tear_last_batch(0, 20);
    let mut seen = 0;
    let summary = wal
        .replay(0, 0, &mut |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!((seen, summary.torn_tail, summary.next_seq), (2, Some(6), 6));
    let err = wal.append(0, 6, 3, &[0; 30]).unwrap_err();
    assert!(matches!(err, WalError::OutOfOrder { expected: 9, .. }), "{err}");
    let err = wal.discard_tail(0, 3).unwrap_err();
    assert!(matches!(err, WalError::NotTheTail { log: 0, seq: 3 }), "{err}");
    wal.discard_tail(0, 6).unwrap();

    append_batches(&wal, 0, 6, 2);
    wal.flip_bit(0, 3, 8 * 40);
    let err = replayed(&wal, 0, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "log 0: batch at record 3 is corrupt (checksum mismatch) and is not the last batch"
    );

    wal.fail_next_syncs(1);
    assert!(matches!(wal.sync(), Err(WalError::InjectedFault(_))));
    wal.sync().unwrap();
}

fn corrupt_in_sled(dir: &std::path::Path, log: u16, seq: u64, damage: impl FnOnce(&mut Vec<u8>)) {
    let segment_bytes = flashstock_wal::sled_wal::SLED_SEGMENT_BYTES;
    // The store was just closed: sled's background threads may hold its file lock for a
    // moment, as `SledWal::open` allows for; without the wait this failed now and then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let db = loop {
        let opened =
            sled::Config::new().path(dir).segment_size(segment_bytes).flush_every_ms(None).open();
        match opened {
            Err(sled::Error::Io(err))
                if err.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other.unwrap(),
        }
    };
    let tree = db.open_tree(format!("log.{log}")).unwrap();
    let mut value = tree.get(seq.to_be_bytes()).unwrap().unwrap().to_vec();
    damage(&mut value);
    tree.insert(seq.to_be_bytes(), value).unwrap();
    db.flush().unwrap();
}

#[test]
fn sled_log_survives_reopen_drops_a_torn_tail_and_refuses_mid_log_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let config = SledWalConfig::new(dir.path());
    {
        let wal = SledWal::open(&config).unwrap();
        append_batches(&wal, 0, 0, 5);
    }
    corrupt_in_sled(dir.path(), 0, 12, |v| v.truncate(v.len() - 4));
    {
        let wal = SledWal::open(&config).unwrap();
        let summary = wal.replay(0, 0, &mut |_| Ok(())).unwrap();
        assert_eq!((summary.batches, summary.torn_tail, summary.next_seq), (4, Some(12), 12));
        wal.discard_tail(0, 12).unwrap();
        append_batches(&wal, 0, 12, 1);
    }
    corrupt_in_sled(dir.path(), 0, 6, |v| v[40] ^= 0x10);
    let wal = SledWal::open(&config).unwrap();
    let err = replayed(&wal, 0, 0).unwrap_err();
    assert!(matches!(err, WalError::Corrupt { log: 0, seq: 6, .. }), "{err}");
    assert!(err.to_string().contains("batch at record 6 is corrupt"), "{err}");
}

#[test]
fn sled_log_nothing_falls_into_unsynced_blobs_and_snapshots_are_files_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = SledWalConfig::new(dir.path());
    let wal = SledWal::open(&config).unwrap();
    // Benchmark-sized: 300 full batches (~19 MB) and a 3 MB snapshot.
    let records = vec![0x5a; BATCH_RECORDS_BYTES_MAX];
    for batch in 0..300u64 {
        wal.append(0, batch * 1000, 1000, &records).unwrap();
        if batch % 50 == 0 {
            wal.sync().unwrap();
        }
    }
    wal.sync().unwrap();
    let state: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    wal.write_snapshot(0, 200_000, &state[1..]).unwrap();
    wal.write_snapshot(0, 300_000, &state).unwrap();
    wal.write_snapshot(0, 300_000, &state).unwrap();
    drop(wal);

    let blobs = dir.path().join("blobs");
    let blob_count = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(blob_count, 0, "sled wrote values to blobs/, which it never fsyncs");
    let snapshots = dir.path().join("shard-snapshots");
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(), ["shard-00000-00000000000000300000.snapshot"], "older ones removed");
    // A crash while writing the next one leaves a partial file: it is not a snapshot.
    let partial = snapshots.join("shard-00000-00000000000000400000.partial");
    std::fs::write(&partial, &state[..1000]).unwrap();
    let wal = SledWal::open(&config).unwrap();
    let latest = wal.latest_snapshot(0).unwrap().unwrap();
    assert_eq!((latest.seq, latest.state == state), (300_000, true));
    drop(wal);

    // A damaged snapshot is refused by name, never half-restored.
    let path = snapshots.join("shard-00000-00000000000000300000.snapshot");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1_000_000] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let wal = SledWal::open(&config).unwrap();
    let err = wal.latest_snapshot(0).unwrap_err();
    assert!(matches!(err, WalError::CorruptSnapshot { log: 0, seq: 300_000, .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    // The next snapshot replaces both the damaged file and the partial one.
    wal.write_snapshot(0, 500_000, b"next").unwrap();
    assert_eq!(names(), ["shard-00000-00000000000000500000.snapshot"]);
    assert_eq!(wal.latest_snapshot(0).unwrap().unwrap().state, b"next");
}

#[test]
fn a_store_held_by_another_process_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = SledWalConfig::new(dir.path());
    drop(SledWal::open(&config).unwrap());
    // Another process holding the store looks, to us, like an exclusive lock on sled's file.
    let held = std::fs::File::open(dir.path().join("db")).unwrap();
    fs2_lock(&held);
    let err = SledWal::open(&config).unwrap_err();
    assert!(matches!(err, WalError::Locked { .. }), "{err}");
    assert!(err.to_string().ends_with("is in use by another process"), "{err}");
}

/// Takes the exclusive flock(2) sled takes, through another open file description, as another
/// process would. A dropped store's background threads may hold the lock a moment longer (seen
/// on a loaded CI machine), so wait for it as `SledWal::open` does.
fn fs2_lock(file: &std::fs::File) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Err(err) = fs2::FileExt::try_lock_exclusive(file) {
        assert!(std::time::Instant::now() < deadline, "the closed store's lock stays held: {err}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
