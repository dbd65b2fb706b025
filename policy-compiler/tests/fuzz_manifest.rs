//! Bounded fuzzing of manifest text -> model: the example manifests,
//! mutated byte-wise (replace, insert, delete, truncate, splice) with a
//! bias to YAML's structural characters, and arbitrary text, must never
//! panic the parser or the converter; every input ends as objects or
//! errors. `NFTPOL_FUZZ_CASES=N` sets the number of inputs per target
//! (default 500, a few seconds, as CI runs it); docs/FUZZING.md records
//! longer runs.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::Path;

fn cases() -> u32 {
    std::env::var("NFTPOL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

fn seeds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples/policies")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| std::fs::read_to_string(p).expect("read example"))
        .collect();
    out.sort();
    out
}

/// Bytes that change YAML structure more than random letters do.
const STRUCTURAL: &[u8] = b" \n-:[]{},&*!|>'\"#%@`?\t0123456789";

#[derive(Clone, Debug)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Truncate(usize),
    Splice(usize, usize, usize),
}

fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(STRUCTURAL.to_vec()),
        1 => any::<u8>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), byte()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>(), 1usize..256).prop_map(|(a, b, n)| Edit::Splice(a, b, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len().max(1);
        match *e {
            Edit::Replace(i, b) if !bytes.is_empty() => bytes[i % len] = b,
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Edit::Delete(i, n) if !bytes.is_empty() => {
                let s = i % len;
                bytes.drain(s..(s + n).min(bytes.len()));
            }
            Edit::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
            Edit::Splice(a, b, n) if !bytes.is_empty() => {
                // Copy a run of the text elsewhere: repeated keys, blocks
                // at odd indents.
                let s = a % len;
                let chunk: Vec<u8> = bytes[s..(s + n).min(bytes.len())].to_vec();
                let at = b % (bytes.len() + 1);
                bytes.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    bytes
}

#[test]
fn mutated_manifests_never_panic() {
    let seeds = seeds();
    assert!(!seeds.is_empty());
    let strategy = (0..seeds.len(), prop::collection::vec(edit(), 1..12));
    let ran = std::cell::Cell::new(0u64);
    runner()
        .run(&strategy, |(seed, edits)| {
            let bytes = apply(seeds[seed].clone().into_bytes(), &edits);
            let text = String::from_utf8_lossy(&bytes);
            let loaded = policy_compiler::manifest::parse("fuzz.yaml", &text);
            for e in &loaded.errors {
                prop_assert!(e.to_string().starts_with("fuzz.yaml: "), "{e}");
            }
            ran.set(ran.get() + 1);
            Ok(())
        })
        .expect("no input panics or loses its source name");
    eprintln!(
        "fuzz: {} mutated manifests parsed without a panic",
        ran.get()
    );
}

#[test]
fn arbitrary_text_never_panics() {
    let strategy = prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(STRUCTURAL.to_vec()),
            1 => prop::sample::select(b"apiVersionkindmetadataspecNetworkPolicy".to_vec()),
            1 => any::<u8>(),
        ],
        0..400,
    );
    let ran = std::cell::Cell::new(0u64);
    runner()
        .run(&strategy, |bytes| {
            let text = String::from_utf8_lossy(&bytes);
            let _ = policy_compiler::manifest::parse("fuzz.yaml", &text);
            ran.set(ran.get() + 1);
            Ok(())
        })
        .expect("no input panics");
    eprintln!("fuzz: {} arbitrary texts parsed without a panic", ran.get());
}
