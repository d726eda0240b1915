//! A connection's life (frames on streams, time passing, streams ending) through the server's
//! sans-IO session rules.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flashstock_protocol::fuzz::server_session(data));
