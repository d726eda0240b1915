//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same bodies the
//! fuzzers run, so every input ever found interesting, crashes fixed included, keeps passing.

use std::path::PathBuf;

/// Runs every input of `target`'s corpus through `body`.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display())) {
        let path = entry.unwrap().path();
        body(&std::fs::read(&path).unwrap());
        inputs += 1;
    }
    assert!(inputs > 0, "{} has no seeds", dir.display());
}

#[test]
fn the_frame_decoder_corpus_passes() {
    replay("frame_decoder", flashstock_protocol::fuzz::frame_decoder);
}

#[test]
fn the_server_session_corpus_passes() {
    replay("server_session", flashstock_protocol::fuzz::server_session);
}

#[test]
fn the_wal_batch_corpus_passes() {
    replay("wal_batch", flashstock_wal::batch::fuzz_decode);
}

#[test]
fn the_snapshot_corpus_passes() {
    replay("snapshot", flashstock_engine::fuzz_restore);
}
