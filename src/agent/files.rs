//! The standalone source: a manifest directory watched with the notify
//! crate (inotify). Every burst of file events (debounced, so an editor's
//! write-rename-chmod counts once) reloads the whole directory, as
//! `nftpol compile --manifests DIR` would read it, and sends it as one
//! `Replace` of every kind: the agent then enforces exactly what `compile`
//! prints for the same directory. Invalid objects are logged, counted and
//! skipped; an unreadable directory keeps the last good state.

use crate::agent::metrics::Metrics;
use crate::agent::reconcile::{Change, Kind, Stamped};
use crate::agent::AgentError;
use notify::{RecursiveMode, Watcher};
use policy_compiler::Error as CompilerError;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Quiet time after a file event before reloading.
const SETTLE: Duration = Duration::from_millis(30);

/// Watches `dir` until the reconcile loop goes away.
pub async fn run(
    dir: PathBuf,
    tx: Sender<Stamped>,
    metrics: Arc<Metrics>,
) -> Result<(), AgentError> {
    let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.as_ref().is_ok_and(|e| !changes_content(&e.kind)) {
            return;
        }
        let _ = ntx.send((Instant::now(), res));
    })
    .map_err(|source| AgentError::Notify {
        path: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .map_err(|source| AgentError::Notify {
            path: dir.clone(),
            source,
        })?;
    // The first load must succeed: there is no last good state yet.
    let first = load(&dir, &metrics)?;
    if tx.send((Instant::now(), first)).is_err() {
        return Ok(());
    }
    while let Some((mut at, res)) = nrx.recv().await {
        if let Err(e) = res {
            metrics.source_error("notify");
            tracing::warn!(error = %e, "file watch error");
        }
        // Let the burst settle; latency counts from its first event.
        loop {
            match tokio::time::timeout(SETTLE, nrx.recv()).await {
                Ok(Some((t, _))) => at = at.min(t),
                Ok(None) => return Ok(()),
                Err(_) => break,
            }
        }
        metrics.event(Kind::Policy, "file_change");
        match load(&dir, &metrics) {
            Ok(change) => {
                if tx.send((at, change)).is_err() {
                    return Ok(());
                }
            }
            Err(e) => {
                metrics.source_error(e.metric_label());
                tracing::warn!(error = %e, "cannot reload manifests; keeping the last good state");
            }
        }
    }
    Ok(())
}

/// Whether a file event can change what the directory holds. Opening and
/// reading a file raises inotify events too: counting them made every
/// reload (the agent's own reads, or `nftpol compile` on the same
/// directory) trigger the next one, a reload every few tens of
/// milliseconds forever.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        // A writer closing the file: the write is complete.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Reads the whole directory into a `Replace` of every kind.
fn load(dir: &PathBuf, metrics: &Metrics) -> Result<Change, AgentError> {
    let loaded = crate::manifests::load(std::slice::from_ref(dir))?;
    for e in &loaded.errors {
        match e {
            CompilerError::InvalidObject(o) => {
                if let Some(k) = Kind::from_api(&o.kind) {
                    metrics.invalid(k);
                }
            }
            CompilerError::Yaml { .. } => metrics.source_error(e.metric_label()),
        }
        tracing::warn!("invalid object skipped: {e}");
    }
    tracing::info!(
        dir = %dir.display(),
        objects = loaded.objects.len(),
        skipped = loaded.errors.len(),
        "manifests loaded"
    );
    Ok(Change::Replace {
        kinds: Kind::ALL.to_vec(),
        objects: loaded.objects,
    })
}

#[cfg(test)]
mod tests {
    use super::changes_content;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RemoveKind, RenameMode,
    };

    #[test]
    fn reads_do_not_count_as_changes() {
        for (kind, want) in [
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), false),
            (EventKind::Access(AccessKind::Read), false),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                false,
            ),
            (EventKind::Access(AccessKind::Any), false),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                true,
            ),
            (EventKind::Create(CreateKind::File), true),
            (EventKind::Modify(ModifyKind::Any), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), true),
            (EventKind::Remove(RemoveKind::File), true),
            (EventKind::Any, true),
        ] {
            assert_eq!(changes_content(&kind), want, "{kind:?}");
        }
    }
}
