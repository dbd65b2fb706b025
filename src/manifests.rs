//! Reading manifest files and directories from disk: the I/O edge in front
//! of `policy_compiler::manifest`, which parses text. Directories are read
//! recursively, `*.yaml`, `*.yml` and `*.json` only, in path order, so the
//! same tree always yields the same objects in the same order.

use crate::error::Error;
use policy_compiler::manifest::{self, Loaded};
use std::path::{Path, PathBuf};

/// Every manifest file under `paths` (files are taken as given).
pub fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::Io {
            path: p.clone(),
            source: e,
        })?;
        if meta.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let io = |e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

/// Loads every object under `paths`. I/O failures are fatal; invalid
/// objects are collected in `Loaded::errors` and the rest still load.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, Error> {
    let mut all = Loaded::default();
    for f in manifest_files(paths)? {
        let text = std::fs::read_to_string(&f).map_err(|e| Error::Io {
            path: f.clone(),
            source: e,
        })?;
        all.extend(manifest::parse(&f.display().to_string(), &text));
    }
    Ok(all)
}
