//! The README's auditor walkthrough, run as written: every `nftpol`
//! command of its shell blocks runs through `sh` on the dump in
//! `examples/walkthrough/` and must succeed, and the output the README
//! quotes must be what the command prints. The commands that read the
//! kernel (`diff` against it, `explain --live`, `hits`) run as root in a
//! network namespace of their own, on the table `nftpol apply` programs
//! there; `kubectl` lines need a cluster and are left out.

use nftpol_test_support::netns::Netns;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SECTIONS: [&str; 2] = [
    "## An auditor's walkthrough",
    "## Verdict logs and staged policies (for auditors)",
];

/// One command of a shell block and the output lines the README quotes
/// for it (comment lines indented past `# `).
#[derive(Debug)]
struct Step {
    command: String,
    quoted: Vec<String>,
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md")
}

/// The text of `heading`'s section, up to the next `## `.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let body = &text[start + 1 + heading.len()..];
    &body[..body.find("\n## ").unwrap_or(body.len())]
}

/// The fenced blocks of `lang` in `text`.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&fence) {
        let body = &rest[i + fence.len()..];
        let end = body.find("```").expect("closed fence");
        out.push(&body[..end]);
        rest = &body[end..][3..];
    }
    out
}

/// The `nftpol` commands of the sections' shell blocks.
fn steps(text: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for heading in SECTIONS {
        for block in blocks(section(text, heading), "sh") {
            let mut pending = String::new();
            for line in block.lines() {
                if let Some(comment) = line.strip_prefix('#') {
                    // `#   text`: output the README quotes for the last command.
                    if let (Some(quoted), Some(last)) =
                        (comment.strip_prefix("   "), steps.last_mut())
                    {
                        last.quoted.push(quoted.trim().to_string());
                    }
                    continue;
                }
                let line = line.split("  #").next().unwrap_or(line).trim_end();
                if let Some(head) = line.strip_suffix('\\') {
                    pending.push_str(head);
                    continue;
                }
                pending.push_str(line);
                let command = std::mem::take(&mut pending).trim().to_string();
                if command.starts_with("nftpol ") {
                    steps.push(Step {
                        command,
                        quoted: Vec::new(),
                    });
                }
            }
        }
    }
    steps
}

/// Whether the command reads the node's kernel (root, on a node).
fn needs_kernel(command: &str) -> bool {
    command.starts_with("nftpol hits")
        || command.contains("--live")
        || (command.starts_with("nftpol diff") && !command.contains("--against-manifests"))
}

/// A scratch copy of the walkthrough's files, where the commands run (they
/// write `matrix.svg` and `flows.csv` next to the dump).
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("nftpol-t-walkthrough-")
        .tempdir()
        .expect("temp dir");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/walkthrough");
    for f in ["dump.yaml", "new-policy.yaml"] {
        std::fs::copy(from.join(f), dir.path().join(f)).expect("copy walkthrough file");
    }
    dir
}

/// `sh -c command` in `dir` with the built `nftpol` first on PATH,
/// optionally inside a network namespace.
fn run(dir: &Path, command: &str, netns: Option<&Netns>) -> Output {
    let bin: PathBuf = Path::new(env!("CARGO_BIN_EXE_nftpol"))
        .parent()
        .expect("bin dir")
        .into();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = match netns {
        Some(ns) => ns.cmd("sh"),
        None => Command::new("sh"),
    };
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("PATH", path)
        .output()
        .expect("run sh")
}

/// Runs `step` and checks it succeeded, printed something (or wrote the
/// file it redirects to) and printed every line the README quotes.
fn check(dir: &Path, step: &Step, netns: Option<&Netns>) -> String {
    let out = run(dir, &step.command, netns);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{}` failed ({}): {stdout}{}",
        step.command,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    match step.command.split_once(" > ") {
        Some((_, file)) => {
            let written = std::fs::metadata(dir.join(file.trim())).map_or(0, |m| m.len());
            assert!(written > 0, "`{}` wrote nothing", step.command);
        }
        None => assert!(!stdout.is_empty(), "`{}` printed nothing", step.command),
    }
    for line in &step.quoted {
        assert!(
            stdout.lines().any(|l| l.trim() == line),
            "`{}` does not print the README's line {line:?}:\n{stdout}",
            step.command
        );
    }
    stdout
}

#[test]
fn offline_walkthrough_commands_run_as_written() {
    let all = steps(&readme());
    let offline: Vec<&Step> = all.iter().filter(|s| !needs_kernel(&s.command)).collect();
    // compile, explain, two matrices, diff against manifests, compile
    // --hash, compile --log.
    assert_eq!(offline.len(), 7, "{all:#?}");
    assert!(offline.iter().any(|s| !s.quoted.is_empty()), "{all:#?}");
    let dir = workdir();
    for step in offline {
        check(dir.path(), step, None);
    }
}

/// The `text` block right after the paragraph that contains `marker`.
fn quoted_block<'a>(text: &'a str, marker: &str) -> &'a str {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("README: {marker:?}"));
    let body = &text[at..];
    let body = &body[body.find("```\n").expect("a block") + 4..];
    &body[..body.find("```").expect("closed fence")]
}

#[test]
fn kernel_walkthrough_commands_run_as_written_on_a_node() {
    nftpol_test_support::require_root!();
    let text = readme();
    let all = steps(&text);
    let kernel: Vec<&Step> = all.iter().filter(|s| needs_kernel(&s.command)).collect();
    // diff against the kernel, explain --live, hits, hits --zero.
    assert_eq!(kernel.len(), 4, "{all:#?}");
    let dir = workdir();
    let node = Netns::create("walkthrough");
    let apply = Step {
        command: "nftpol apply -m dump.yaml --node-name node-1".into(),
        quoted: Vec::new(),
    };
    check(dir.path(), &apply, Some(&node));
    let live = kernel
        .iter()
        .find(|s| s.command.contains("--live"))
        .expect("explain --live");
    for step in &kernel {
        let out = check(dir.path(), step, Some(&node));
        if step.command.contains("--live") {
            assert!(out.contains("the kernel agrees with the compiler"), "{out}");
        }
    }
    // The README's mismatch: someone put an accept at the top of the
    // chain. Every line it shows is what explain --live prints, exit 3.
    let ins = node.nft(&[
        "insert",
        "rule",
        "inet",
        "nftpol",
        "ing_default_my-app-0",
        "accept",
    ]);
    assert!(
        ins.status.success(),
        "{}",
        String::from_utf8_lossy(&ins.stderr)
    );
    let out = run(dir.path(), &live.command, Some(&node));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let shown = quoted_block(&text, "if someone changed the table by hand it says so");
    for line in shown.lines() {
        assert!(
            stdout.lines().any(|l| l.trim() == line.trim()),
            "explain --live does not print the README's line {line:?}:\n{stdout}"
        );
    }
}
