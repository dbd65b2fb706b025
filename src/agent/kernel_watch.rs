//! The thread that listens to the kernel's nftables notifications and
//! tells the reconcile loop when someone else changed the `inet nftpol`
//! table, so tampering is repaired within milliseconds of its commit
//! rather than at the next periodic drift check (which stays as the
//! backstop: a missed or unavailable notification costs at most one
//! drift interval).
//!
//! The agent's own batches are recognised by the port id the kernel
//! stamps on each notification and skipped without reading further; a
//! burst of foreign notifications becomes one `Verify` per receive, and
//! the loop coalesces those.

use crate::agent::reconcile::{Change, Stamped};
use crate::netlink::notify::{Seen, Watcher};
use crate::netlink::NetlinkError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one blocking receive waits before the thread checks whether
/// it should stop.
const TICK: Duration = Duration::from_millis(250);
/// Pause before re-subscribing after a socket error.
const REOPEN: Duration = Duration::from_secs(1);

/// The running watcher thread.
pub struct KernelWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl KernelWatch {
    /// Stops the thread (within one tick) and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Subscribes (so no change committed from now on is missed) and starts
/// the thread. Fails when the subscription is refused, e.g. without
/// CAP_NET_ADMIN.
pub fn spawn(tx: Sender<Stamped>) -> Result<KernelWatch, crate::agent::AgentError> {
    let watcher = Watcher::open(TICK).map_err(backend_err)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("nftpol-kernel-watch".into())
        .spawn(move || run(watcher, &tx, &flag))
        .map_err(crate::agent::AgentError::Runtime)?;
    tracing::info!("watching nftables notifications for changes to the nftpol table");
    Ok(KernelWatch { stop, thread })
}

fn backend_err(e: NetlinkError) -> crate::agent::AgentError {
    crate::agent::AgentError::Backend(e.into())
}

fn run(mut watcher: Watcher, tx: &Sender<Stamped>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let reason = match watcher.wait() {
            Ok(None) => continue,
            Ok(Some(Seen::Foreign { what, port })) => {
                format!("{what} by netlink port {port}")
            }
            Ok(Some(Seen::Lost)) => "notifications lost (receive queue overflow)".into(),
            Err(e) => {
                tracing::warn!(error = %e, "nftables notification socket failed; re-subscribing");
                std::thread::sleep(REOPEN);
                match Watcher::open(TICK) {
                    Ok(w) => watcher = w,
                    Err(e) => tracing::warn!(error = %e, "re-subscribing failed"),
                }
                // Something may have changed while nobody listened.
                "notification socket re-opened".into()
            }
        };
        if tx
            .send((Instant::now(), Change::Verify { reason }))
            .is_err()
        {
            return; // the loop is gone
        }
    }
}
