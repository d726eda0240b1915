//! `flashstock-loadgen`: the SREs' flash-sale load generator.
//!
//! Not built yet: it drives the QUIC server through the client library, and both arrive with
//! the wire-protocol issue. Until then `flashstock-demo` runs a flash sale in process and
//! `bench/` holds the criterion suites. This binary says so and exits non-zero rather than
//! pretend to measure anything.

fn main() {
    eprintln!(
        "flashstock-loadgen is not implemented yet: it needs the QUIC server (issue 3).\n\
         Meanwhile: cargo run --release -p flashstock-server --bin flashstock-demo -- --help"
    );
    std::process::exit(2);
}
