//! Arbitrary bytes, in arbitrary chunks, through the frame decoder and message validation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flashstock_protocol::fuzz::frame_decoder(data));
