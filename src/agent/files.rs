//! The standalone source: a manifest directory watched with the notify
//! crate (inotify). Every burst of file events (debounced, so an editor's
//! write-rename-chmod counts once) reloads the directory, as `nftpol
//! compile --manifests DIR` would read it, and sends it as one `Replace` of
//! every kind: the agent then enforces what `compile` prints for the same
//! directory, except where a file is mid-write or broken.
//!
//! A half-written file must never weaken enforcement: a policy cut after
//! `- from:` is valid YAML that allows everyone. So the last good state is
//! kept per file. A file that a writer still holds open (modified, not yet
//! closed) is read only after it has been quiet for `OPEN_SETTLE`; one that
//! was closed after writing, renamed into place or removed is read at once,
//! so latency counts from the close or rename. A file that then fails to
//! parse, or holds an invalid object, keeps its previous objects whole,
//! with a warning and the `file_kept` error count. Writers that close a
//! file between partial writes defeat this: the README asks them to write
//! a temporary file and rename it.

use crate::agent::metrics::Metrics;
use crate::agent::reconcile::{Change, Kind, Stamped};
use crate::agent::AgentError;
use notify::{RecursiveMode, Watcher};
use policy_compiler::manifest::Object;
use policy_compiler::Error as CompilerError;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When a burst's programming latency starts: at its first event that
/// completes a manifest file (closed after writing, renamed, removed), so
/// an atomic save counts from its rename, not from the first event of the
/// temporary file written before it. A burst without one (a directory
/// created, say) counts from its first event.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Burst {
    first: Option<Instant>,
    completed: Option<Instant>,
}

impl Burst {
    fn note(&mut self, event: &notify::Event, at: Instant) {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        let earliest = |t: Option<Instant>| Some(t.map_or(at, |t| t.min(at)));
        self.first = earliest(self.first);
        let completes = matches!(
            event.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Remove(_)
        );
        let manifest = event.paths.iter().any(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(crate::manifests::is_manifest_name)
        });
        if completes && manifest {
            self.completed = earliest(self.completed);
        }
    }

    fn start(&self) -> Option<Instant> {
        self.completed.or(self.first)
    }
}

/// Quiet time after a file event before reloading.
const SETTLE: Duration = Duration::from_millis(30);
/// Quiet time before a file still open for writing is read anyway (a
/// writer that never closes, or a missed close event).
const OPEN_SETTLE: Duration = Duration::from_secs(2);

/// The last good objects of every file, and the files mid-write.
#[derive(Default)]
struct Files {
    good: BTreeMap<PathBuf, Vec<Object>>,
    /// Files modified and not yet closed, with their last modification.
    open: HashMap<PathBuf, Instant>,
}

/// What one event says about a path.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mark {
    /// Written to and possibly still open.
    Writing,
    /// Complete: closed after writing, renamed, created or removed.
    Done,
    /// Nothing about the content.
    Ignore,
}

fn mark(kind: &notify::EventKind) -> Mark {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Mark::Done,
        EventKind::Access(_) => Mark::Ignore,
        EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any) => {
            Mark::Writing
        }
        EventKind::Modify(ModifyKind::Metadata(_)) => Mark::Ignore,
        _ => Mark::Done,
    }
}

impl Files {
    fn note(&mut self, event: &notify::Event, at: Instant) {
        for p in &event.paths {
            match mark(&event.kind) {
                Mark::Writing => {
                    self.open.insert(p.clone(), at);
                }
                Mark::Done => {
                    self.open.remove(p);
                }
                Mark::Ignore => {}
            }
        }
    }

    /// When the earliest file held open becomes readable anyway.
    fn next_deadline(&self) -> Option<Instant> {
        self.open.values().min().map(|t| *t + OPEN_SETTLE)
    }

    /// Rereads the directory: files mid-write and broken files keep their
    /// last good objects; the rest are read as they are now.
    fn reload(
        &mut self,
        dir: &Path,
        now: Instant,
        metrics: &Metrics,
    ) -> Result<Change, AgentError> {
        self.open.retain(|_, t| now < *t + OPEN_SETTLE);
        let mut next = BTreeMap::new();
        let mut skipped = 0;
        for f in crate::manifests::manifest_files(&[dir.to_path_buf()])? {
            let previous = self.good.remove(&f);
            if self.open.contains_key(&f) {
                tracing::debug!(file = %f.display(), "file is being written; keeping its last state");
                next.insert(f, previous.unwrap_or_default());
                continue;
            }
            let loaded = match crate::manifests::load_file(&f) {
                Ok(l) => l,
                // Gone between the walk and the read: the remove event follows.
                Err(e) => {
                    tracing::debug!(error = %e, "file vanished while reloading");
                    continue;
                }
            };
            count_errors(&loaded.errors, metrics);
            skipped += loaded.errors.len();
            match previous {
                Some(prev) if !loaded.errors.is_empty() => {
                    metrics.source_error("file_kept");
                    tracing::warn!(
                        file = %f.display(),
                        "file has errors; keeping its last good objects until it is fixed"
                    );
                    next.insert(f, prev);
                }
                _ => {
                    next.insert(f, loaded.objects);
                }
            }
        }
        self.good = next;
        let objects: Vec<Object> = self.good.values().flatten().cloned().collect();
        tracing::info!(
            dir = %dir.display(),
            objects = objects.len(),
            skipped,
            "manifests loaded"
        );
        Ok(Change::Replace {
            kinds: Kind::ALL.to_vec(),
            objects,
        })
    }
}

fn count_errors(errors: &[CompilerError], metrics: &Metrics) {
    for e in errors {
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
}

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
    let mut files = Files::default();
    // The first load must succeed: there is no last good state yet.
    let first = files.reload(&dir, Instant::now(), &metrics)?;
    if tx.send((Instant::now(), first)).is_err() {
        return Ok(());
    }
    loop {
        // Wake for the next event, or when a file held open is due.
        let first = match files.next_deadline() {
            Some(d) => match tokio::time::timeout_at(d.into(), nrx.recv()).await {
                Ok(r) => r,
                Err(_) => {
                    if !send_reload(&mut files, &dir, Instant::now(), &tx, &metrics) {
                        return Ok(());
                    }
                    continue;
                }
            },
            None => nrx.recv().await,
        };
        let Some((at, res)) = first else {
            return Ok(());
        };
        let mut burst = Burst::default();
        handle(&mut files, &mut burst, res, at, &metrics);
        // Let the burst settle; latency counts from the write it completes.
        loop {
            match tokio::time::timeout(SETTLE, nrx.recv()).await {
                Ok(Some((t, res))) => handle(&mut files, &mut burst, res, t, &metrics),
                Ok(None) => return Ok(()),
                Err(_) => break,
            }
        }
        metrics.event(Kind::Policy, "file_change");
        let at = burst.start().unwrap_or(at);
        if !send_reload(&mut files, &dir, at, &tx, &metrics) {
            return Ok(());
        }
    }
}

fn handle(
    files: &mut Files,
    burst: &mut Burst,
    res: notify::Result<notify::Event>,
    at: Instant,
    metrics: &Metrics,
) {
    match res {
        Ok(e) => {
            files.note(&e, at);
            burst.note(&e, at);
        }
        Err(e) => {
            metrics.source_error("notify");
            tracing::warn!(error = %e, "file watch error");
        }
    }
}

/// Reloads and sends; false once the reconcile loop is gone.
fn send_reload(
    files: &mut Files,
    dir: &Path,
    at: Instant,
    tx: &Sender<Stamped>,
    metrics: &Metrics,
) -> bool {
    match files.reload(dir, Instant::now(), metrics) {
        Ok(change) => tx.send((at, change)).is_ok(),
        Err(e) => {
            metrics.source_error(e.metric_label());
            tracing::warn!(error = %e, "cannot reload manifests; keeping the last good state");
            true
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
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

    /// An atomic save (a hidden temporary file written, closed, renamed
    /// over the manifest) counts from the rename; a file written in place
    /// from its close; a burst that completes no manifest from its first
    /// event.
    #[test]
    fn latency_starts_when_a_manifest_is_complete() {
        let dir = Path::new("/m");
        let (tmp, real) = (dir.join(".web.yaml.tmp"), dir.join("web.yaml"));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let burst = |events: &[(notify::Event, u64)]| {
            let mut b = Burst::default();
            for (e, ms) in events {
                b.note(e, at(*ms));
            }
            b.start()
        };
        let written = EventKind::Modify(ModifyKind::Data(DataChange::Content));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let atomic = [
            (event(EventKind::Create(CreateKind::File), &tmp), 0),
            (event(written, &tmp), 1),
            (event(closed, &tmp), 7),
            (
                event(EventKind::Modify(ModifyKind::Name(RenameMode::From)), &tmp),
                12,
            ),
            (
                event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &real),
                12,
            ),
        ];
        assert_eq!(burst(&atomic), Some(at(12)));
        let both = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path(tmp.clone())
            .add_path(real.clone());
        assert_eq!(burst(&[(event(written, &tmp), 3), (both, 9)]), Some(at(9)));
        let in_place = [
            (event(EventKind::Create(CreateKind::File), &real), 0),
            (event(written, &real), 2),
            (event(closed, &real), 5),
        ];
        assert_eq!(burst(&in_place), Some(at(5)));
        let removed = [(event(EventKind::Remove(RemoveKind::File), &real), 4)];
        assert_eq!(burst(&removed), Some(at(4)));
        let no_manifest = [
            (
                event(EventKind::Create(CreateKind::Folder), &dir.join("sub")),
                3,
            ),
            (event(closed, &tmp), 6),
        ];
        assert_eq!(burst(&no_manifest), Some(at(3)));
        assert_eq!(Burst::default().start(), None);
    }

    const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}}\n";
    /// Allows only `client` pods on TCP 80; every prefix cut at a line end
    /// is either broken or, like the cut after `- from:`, allows more.
    const ALLOW: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n  namespace: a\nspec:\n  podSelector:\n    matchLabels: {app: web}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {app: client}\n    ports:\n    - port: 80\n";

    fn event(kind: EventKind, path: &Path) -> notify::Event {
        notify::Event::new(kind).add_path(path.to_path_buf())
    }

    fn objects(c: Change) -> Vec<Object> {
        match c {
            Change::Replace { objects, .. } => objects,
            other => panic!("want a Replace, got {other:?}"),
        }
    }

    fn parsed(text: &str) -> Vec<Object> {
        let l = policy_compiler::manifest::parse("x", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        l.objects
    }

    /// A policy file written in chunks, reloaded after every chunk both
    /// while the writer holds it open and after a close: the loaded state
    /// is always the file's previous state or its complete one, never a
    /// weaker prefix.
    #[test]
    fn a_file_written_in_chunks_never_loads_a_weaker_prefix() {
        let metrics = Metrics::default();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("deny.yaml"), DENY).expect("write");
        let f = dir.path().join("web.yaml");
        // The file starts as the same policy allowing nobody.
        let start = ALLOW
            .replace("    ports:\n    - port: 80\n", "")
            .replace("app: client", "app: nobody");
        std::fs::write(&f, &start).expect("write");
        let mut files = Files::default();
        let t0 = Instant::now();
        let before = objects(files.reload(dir.path(), t0, &metrics).expect("load"));
        let deny = parsed(DENY);
        let complete = [deny.clone(), parsed(ALLOW)].concat();
        let mut saw_from_cut = false;
        let cuts: Vec<usize> = ALLOW.match_indices('\n').map(|(i, _)| i + 1).collect();
        for (step, cut) in cuts.iter().enumerate() {
            let prefix = &ALLOW[..*cut];
            saw_from_cut |= prefix.ends_with("- from:\n");
            std::fs::write(&f, prefix).expect("write chunk");
            // The writer still holds the file: a modify, no close.
            let now = t0 + Duration::from_millis(10 * step as u64);
            files.note(
                &event(EventKind::Modify(ModifyKind::Data(DataChange::Content)), &f),
                now,
            );
            let open = objects(files.reload(dir.path(), now, &metrics).expect("reload"));
            assert_eq!(open, before, "read mid-write at {prefix:?}");
        }
        assert!(saw_from_cut);
        // Closed after each chunk (a writer that does not write atomically,
        // which the README warns against): a prefix that does not parse
        // keeps the state before it.
        let mut last = before.clone();
        for cut in &cuts {
            let prefix = &ALLOW[..*cut];
            std::fs::write(&f, prefix).expect("write chunk");
            let broken = !policy_compiler::manifest::parse("x", prefix)
                .errors
                .is_empty();
            files.note(
                &event(EventKind::Access(AccessKind::Close(AccessMode::Write)), &f),
                t0,
            );
            let got = objects(files.reload(dir.path(), t0, &metrics).expect("reload"));
            if broken {
                assert_eq!(got, last, "broken prefix {prefix:?} changed the state");
            }
            last = got;
        }
        assert_eq!(
            objects(files.reload(dir.path(), t0, &metrics).expect("reload")),
            complete
        );
    }

    #[test]
    fn a_file_held_open_is_read_after_the_open_settle_time() {
        let metrics = Metrics::default();
        let dir = tempfile::tempdir().expect("temp dir");
        let f = dir.path().join("web.yaml");
        let mut files = Files::default();
        let t0 = Instant::now();
        assert!(objects(files.reload(dir.path(), t0, &metrics).expect("load")).is_empty());
        std::fs::write(&f, DENY).expect("write");
        files.note(
            &event(EventKind::Modify(ModifyKind::Data(DataChange::Content)), &f),
            t0,
        );
        assert_eq!(files.next_deadline(), Some(t0 + OPEN_SETTLE));
        assert!(objects(files.reload(dir.path(), t0, &metrics).expect("reload")).is_empty());
        let later = objects(
            files
                .reload(dir.path(), t0 + OPEN_SETTLE, &metrics)
                .expect("reload"),
        );
        assert_eq!(later, parsed(DENY));
        assert_eq!(files.next_deadline(), None);
    }

    #[test]
    fn a_broken_file_keeps_its_objects_and_a_removed_file_drops_them() {
        let metrics = Metrics::default();
        let dir = tempfile::tempdir().expect("temp dir");
        let f = dir.path().join("deny.yaml");
        std::fs::write(&f, DENY).expect("write");
        let mut files = Files::default();
        let t0 = Instant::now();
        assert_eq!(
            objects(files.reload(dir.path(), t0, &metrics).expect("load")),
            parsed(DENY)
        );
        std::fs::write(&f, "spec: [\n").expect("break");
        assert_eq!(
            objects(files.reload(dir.path(), t0, &metrics).expect("reload")),
            parsed(DENY)
        );
        std::fs::remove_file(&f).expect("remove");
        assert!(objects(files.reload(dir.path(), t0, &metrics).expect("reload")).is_empty());
    }
}
