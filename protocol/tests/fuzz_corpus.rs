//! Replays the committed fuzz corpora of the protocol's targets (`fuzz/corpus/`) through the
//! same bodies the fuzzers run, so every input ever found interesting keeps passing.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    assert!(!inputs.is_empty(), "{} has no seeds", dir.display());
    inputs
}

#[test]
fn the_frame_decoder_corpus_passes() {
    for (_path, bytes) in corpus("frame_decoder") {
        flashstock_protocol::fuzz::frame_decoder(&bytes);
    }
}

#[test]
fn the_server_session_corpus_passes() {
    for (_path, bytes) in corpus("server_session") {
        flashstock_protocol::fuzz::server_session(&bytes);
    }
}
