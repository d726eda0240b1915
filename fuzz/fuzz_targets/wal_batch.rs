//! Arbitrary bytes as a stored WAL batch value, and its records.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flashstock_wal::batch::fuzz_decode(data));
