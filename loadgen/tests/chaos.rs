//! The chaos rehearsal, short: the real `flashstockd` and `order-writer` binaries (built beside
//! this test's by `cargo test --workspace`) as child processes, a checkout load, the server
//! SIGKILLed and restarted twice (the writer with it once), then the audit of every SKU and of
//! the order rows. The long version, with its figures, is in the README.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use flashstock_loadgen::chaos::{chaos, ChaosOptions};
use flashstock_loadgen::run::RunConfig;
use flashstock_loadgen::scenario::Scenario;

fn beside_this_test(name: &str) -> PathBuf {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_flashstock-loadgen"));
    let path = loadgen.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo test --workspace)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_survives_sigkills_of_the_server_and_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    // A free UDP port the server can keep across restarts.
    let listen = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let options = ChaosOptions {
        server_bin: beside_this_test("flashstockd"),
        writer_bin: beside_this_test("order-writer"),
        work_dir: dir.path().to_path_buf(),
        listen,
        cycles: 2,
        kill_every: Duration::from_secs(2),
        kill_writer_every: 2,
        scenario: Scenario::Checkout {
            skus: 20,
            units_per_sku: 100_000,
            confirm_probability: 0.7,
            abandon_fraction: 0.1,
            think_ms: 2,
        },
        run: RunConfig {
            concurrency: 4,
            batch: 32,
            rate_per_s: None,
            duration: None,
            requests: 0,
            warmup: Duration::ZERO,
            seed: 7,
            progress: false,
        },
        ttl_ms: 600_000,
        connections: 2,
    };
    let report = chaos(options).await.unwrap();
    let audit = &report.finished.audit;
    assert!(audit.passed, "{audit:?}");
    assert!(audit.checks.iter().any(|c| c.name == "orders_equal_confirms"), "{audit:?}");
    assert!(audit.totals.sold > 0, "the run sold something: {audit:?}");
    assert_eq!(report.cycles.len(), 2);
    assert!(report.cycles[1].writer_killed && !report.cycles[0].writer_killed);
    for cycle in &report.cycles {
        // Generous for a loaded CI machine and debug builds; the README has the real figures.
        let first_answer_ms = cycle.first_answer_ms.expect("the probe was answered again");
        let resubscribed_ms = cycle.resubscribed_ms.expect("the writer subscribed again");
        assert!(first_answer_ms < 5_000 && resubscribed_ms < 5_000, "{cycle:?}");
    }
}
