//! A node's log on sled, synced the way the product's WAL syncs (`flush` then `fdatasync` of
//! sled's data file; `flush` alone is `sync_file_range`, which reaches neither the drive's cache
//! nor metadata). Syncs are grouped: callers queue a completion and one thread syncs once for
//! everything queued, then completes them in order.

use std::fs::File;
use std::path::Path;
use std::sync::mpsc;

/// sled's segment size: items above a quarter of it go to unsynced blob files (FACTS.md).
const SEGMENT_BYTES: usize = 8 << 20;

/// A log: entries by index (big-endian keys, so sled's order is log order) and a few values.
#[derive(Clone)]
pub struct Disk {
    pub log: sled::Tree,
    pub meta: sled::Tree,
    syncs: mpsc::Sender<Box<dyn FnOnce(std::io::Result<()>) + Send>>,
}

impl Disk {
    pub fn open(path: &Path) -> anyhow::Result<Disk> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(256 << 20)
            .mode(sled::Mode::HighThroughput)
            .segment_size(SEGMENT_BYTES)
            .flush_every_ms(None)
            .open()?;
        File::open(path)?.sync_all()?;
        let data = File::open(path.join("db"))?;
        let (syncs, queue) = mpsc::channel();
        let log = db.open_tree("log")?;
        let meta = db.open_tree("meta")?;
        std::thread::Builder::new()
            .name("sync".into())
            .spawn(move || sync_loop(db, data, queue))?;
        Ok(Disk { log, meta, syncs })
    }

    /// Calls `done` once everything written before this call is on disk.
    pub fn after_sync(&self, done: impl FnOnce(std::io::Result<()>) + Send + 'static) {
        // The sync thread lives as long as the process; a send can only fail at exit.
        let _ = self.syncs.send(Box::new(done));
    }

    /// Waits until everything written so far is on disk.
    pub async fn sync(&self) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_sync(move |r| {
            let _ = tx.send(r);
        });
        rx.await.unwrap_or_else(|_| Err(std::io::Error::other("sync thread gone")))
    }
}

type Done = Box<dyn FnOnce(std::io::Result<()>) + Send>;

fn sync_loop(db: sled::Db, data: File, queue: mpsc::Receiver<Done>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        let synced = db.flush().map_err(std::io::Error::other).and_then(|_| data.sync_data());
        for done in batch {
            done(match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            });
        }
    }
}

/// The key of log index `index`.
pub fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index a log key names.
pub fn index_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key.try_into().expect("log keys are 8 bytes"))
}
