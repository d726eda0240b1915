//! flashstock's wire protocol: sans-IO framing of rkyv-archived messages over QUIC streams.
//!
//! Empty until the QUIC issue lands; the engine core (issue 2) is reached in-process through
//! `flashstock_server::Handle` meanwhile.
