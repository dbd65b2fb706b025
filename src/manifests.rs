//! Reading manifest files and directories from disk: the I/O edge in front
//! of `policy_compiler::manifest`, which parses text. Directories are read
//! recursively, `*.yaml`, `*.yml` and `*.json` only, in path order, so the
//! same tree always yields the same objects in the same order.
//!
//! Symbolic links are followed, with walkdir's loop detection: a link back
//! to an ancestor is skipped with a warning instead of being walked again
//! and again, and a file reached through two links is read once. Hidden
//! entries (`.*`, e.g. an editor's `.#x.yaml` lock or a `.git` directory)
//! and backups (`*~`) are skipped, as editors' swap and temp files are.

use crate::error::Error;
use policy_compiler::manifest::{self, Loaded};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use walkdir::WalkDir;

/// Whether a directory walk reads a file of this name: a manifest
/// extension, and not hidden or an editor's backup, swap or temp file.
pub fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.')
        && !name.ends_with('~')
        && Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// Every manifest file under `paths` (files are taken as given).
pub fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    // (device, inode) of every file taken, so a file reached twice through
    // links is read once.
    let mut seen = HashSet::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::Io {
            path: p.clone(),
            source: e,
        })?;
        if meta.is_dir() {
            walk(p, &mut seen, &mut out)?;
        } else if seen.insert((meta.dev(), meta.ino())) {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, seen: &mut HashSet<(u64, u64)>, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.loop_ancestor().is_some() => {
                tracing::warn!(
                    path = %e.path().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
                    "symbolic link loop skipped"
                );
                continue;
            }
            Err(e) => {
                let path = e.path().unwrap_or(dir).to_path_buf();
                // A dangling link that is no manifest does not matter.
                let named = path
                    .file_name()
                    .is_some_and(|n| is_manifest_name(&n.to_string_lossy()));
                if !named
                    && e.io_error()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
                {
                    continue;
                }
                let source = e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("directory walk failed"));
                return Err(Error::Io { path, source });
            }
        };
        if entry.file_type().is_dir() || !is_manifest_name(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let meta = entry.metadata().map_err(|e| Error::Io {
            path: entry.path().to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("cannot stat")),
        })?;
        if seen.insert((meta.dev(), meta.ino())) {
            out.push(entry.into_path());
        }
    }
    Ok(())
}

/// Reads and parses one manifest file.
pub fn load_file(f: &Path) -> Result<Loaded, Error> {
    let text = std::fs::read_to_string(f).map_err(|e| Error::Io {
        path: f.to_path_buf(),
        source: e,
    })?;
    Ok(manifest::parse(&f.display().to_string(), &text))
}

/// Loads every object under `paths`. I/O failures are fatal; invalid
/// objects are collected in `Loaded::errors` and the rest still load.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, Error> {
    let mut all = Loaded::default();
    for f in manifest_files(paths)? {
        all.extend(load_file(&f)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";

    #[test]
    fn symlink_loops_are_skipped_and_each_file_is_read_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/ns.yaml"), NS).expect("write");
        // Two loops back to the root, a loop inside, and a second way in.
        symlink(".", root.join("loop1")).expect("symlink");
        symlink(".", root.join("loop2")).expect("symlink");
        symlink("..", root.join("sub/up")).expect("symlink");
        symlink("sub", root.join("again")).expect("symlink");
        symlink("sub/ns.yaml", root.join("link.yaml")).expect("symlink");
        let files = manifest_files(&[root.to_path_buf()]).expect("walk");
        assert_eq!(files, vec![root.join("again/ns.yaml")]);
        let loaded = load(&[root.to_path_buf()]).expect("load");
        assert_eq!(loaded.objects.len(), 1);
    }

    #[test]
    fn hidden_backup_and_temp_files_are_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for name in [
            "a.yaml",
            ".a.yaml",
            ".#a.yaml",
            "a.yaml~",
            "a.yaml.swp",
            ".a.yaml.swp",
            "a.yaml.tmp",
            "4913",
            "b.json",
            "c.yml",
        ] {
            std::fs::write(root.join(name), NS).expect("write");
        }
        std::fs::create_dir(root.join(".git")).expect("mkdir");
        std::fs::write(root.join(".git/x.yaml"), NS).expect("write");
        let names: Vec<String> = manifest_files(&[root.to_path_buf()])
            .expect("walk")
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["a.yaml", "b.json", "c.yml"]);
    }

    #[test]
    fn a_dangling_link_to_a_manifest_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        symlink("gone.yaml", dir.path().join("x.yaml")).expect("symlink");
        symlink("gone", dir.path().join("notes")).expect("symlink");
        let e = manifest_files(&[dir.path().to_path_buf()]).expect_err("dangling manifest");
        assert!(e.to_string().contains("x.yaml"), "{e}");
    }
}
