//! Arbitrary bytes as a shard snapshot: restore must refuse what is not one, never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flashstock_engine::fuzz_restore(data));
