//! The signals an operator stops a process with. The handlers are installed when asked, so a
//! binary asks before it starts anything: a SIGTERM that arrives during start-up then stops
//! it cleanly instead of killing it.

use std::future::Future;

/// Installs SIGINT and SIGTERM handlers (inside a tokio runtime) and returns what completes
/// on the first of them.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
