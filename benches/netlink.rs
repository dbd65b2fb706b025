//! Netlink applier vs `nft`, side by side in one run.
//!
//! Run as root: `cargo bench --bench netlink`. The main thread first
//! enters a scratch network namespace (`nftpol_test_support::Netns`), so
//! the bench never touches the host's ruleset; the `nft` processes it
//! starts inherit that namespace. Prints a markdown table for docs/BENCHMARKS.md.
//! Env: `NFTPOL_BENCH_RUNS` (full-apply runs, default 5),
//! `NFTPOL_BENCH_SMALL_RUNS` (incremental runs, default 21).

use nftpol::netlink::{Applier, Session};
use policy_compiler::diff::{self, Op, Transaction};
use policy_compiler::fixture::{allow_tcp_from, pod_chain, set};
use policy_compiler::ir::*;
use policy_compiler::render::{render_rule, render_script};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// `pods` per-pod chains of 10 rules each, and per pod three sets of
/// 60 addresses, 20 port ranges and 20 named-port entries (100 elements),
/// plus the ingress verdict map with one element per pod.
fn ruleset(pods: usize) -> Ruleset {
    let mut rs = Ruleset::default();
    let mut vmap = BTreeSet::new();
    for p in 0..pods {
        let (hi, lo) = ((p / 256) as u8, (p % 256) as u8);
        let chain = format!("ing_bench_p{p}");
        let (addrs, ports, named) = (
            format!("pod4_p{p}"),
            format!("tcp_p{p}"),
            format!("nam4_p{p}"),
        );
        rs.sets.insert(
            addrs.clone(),
            set(
                SetKind::Addr {
                    family: Family::Ipv4,
                    interval: false,
                },
                (0..60).map(|i| Element::Addr(v4(10, 100 + i, hi, lo))),
            ),
        );
        rs.sets.insert(
            ports.clone(),
            set(
                SetKind::Ports,
                (0..20u16).map(|i| Element::PortRange(1000 + i * 10, 1004 + i * 10)),
            ),
        );
        rs.sets.insert(
            named.clone(),
            set(
                SetKind::AddrProtoPort {
                    family: Family::Ipv4,
                },
                (0..20u16).map(|i| Element::AddrProtoPort(v4(10, 200, hi, lo), l4::TCP, 8000 + i)),
            ),
        );
        let from = Match::AddrInSet {
            family: Family::Ipv4,
            dir: Dir::Src,
            set: addrs.clone(),
        };
        let mut rules: Vec<Rule> = (0..7u16)
            .map(|k| Rule {
                matches: vec![
                    from.clone(),
                    Match::L4Proto(l4::TCP),
                    Match::DPort {
                        lo: 80 + k,
                        hi: 80 + k,
                    },
                ],
                verdict: Verdict::Accept,
                comment: Some(format!("bench/pol{k} ingress[0]")),
            })
            .collect();
        rules.push(allow_tcp_from(
            &addrs,
            &ports,
            Some("bench/ports ingress[0]"),
        ));
        rules.push(Rule {
            matches: vec![Match::DAddrProtoPortInSet {
                family: Family::Ipv4,
                set: named,
            }],
            verdict: Verdict::Accept,
            comment: Some("bench/named ingress[0]".into()),
        });
        rs.chains
            .insert(chain.clone(), pod_chain(rules, Some("ingress isolated")));
        vmap.insert(Element::VmapJump(v4(10, 244, hi, lo), chain));
    }
    rs.sets.insert(
        "ingress_v4".into(),
        Set {
            kind: SetKind::Vmap {
                family: Family::Ipv4,
            },
            elements: vmap,
        },
    );
    rs.chains.insert(
        "forward".into(),
        Chain {
            base: Some(BaseChain {
                hook: Hook::Forward,
                priority: 0,
                policy: ChainPolicy::Accept,
                device: None,
            }),
            rules: vec![
                Rule {
                    matches: vec![Match::CtState(
                        [CtState::Established, CtState::Related].into(),
                    )],
                    verdict: Verdict::Accept,
                    comment: None,
                },
                Rule {
                    matches: vec![],
                    verdict: Verdict::AddrVmap {
                        family: Family::Ipv4,
                        dir: Dir::Dst,
                        map: "ingress_v4".into(),
                    },
                    comment: None,
                },
            ],
        },
    );
    rs
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 0.1 {
        format!("{:.1} µs", ms * 1e3)
    } else if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Runs `nft -f FILE`, returns the wall time.
fn nft_file(path: &std::path::Path) -> Duration {
    let t = Instant::now();
    let st = Command::new("nft")
        .arg("-f")
        .arg(path)
        .status()
        .expect("run nft");
    let d = t.elapsed();
    assert!(st.success(), "nft -f {} failed", path.display());
    d
}

fn nft_list(args: &[&str]) -> (Duration, usize) {
    let t = Instant::now();
    let out = Command::new("nft")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run nft");
    let d = t.elapsed();
    assert!(out.status.success(), "nft {args:?} failed");
    (d, out.stdout.len())
}

fn write(path: &std::path::Path, text: &str) {
    let mut f = std::fs::File::create(path).expect("create script");
    f.write_all(text.as_bytes()).expect("write script");
}

struct Row {
    what: String,
    netlink: Duration,
    nft: Option<Duration>,
    note: String,
}

fn main() {
    if !nftpol_test_support::run_by_cargo_bench() {
        eprintln!(
            "root and minutes of work: run with `cargo bench --bench {}`",
            env!("CARGO_CRATE_NAME")
        );
        return;
    }
    // Writes the full ruleset's nft script to a file, for profiling nft.
    if let Ok(path) = std::env::var("NFTPOL_BENCH_DUMP") {
        write(std::path::Path::new(&path), &render_script(&ruleset(1000)));
        return;
    }
    // Profiling aid (no root needed): encode the full batch repeatedly.
    if let Ok(n) = std::env::var("NFTPOL_BENCH_ENCODE_ONLY") {
        let tx = diff::create(&ruleset(1000));
        let (elems, rest): (Vec<Op>, Vec<Op>) = tx
            .ops
            .iter()
            .cloned()
            .partition(|o| matches!(o, Op::AddElements { .. }));
        let parts = [
            ("all", tx.clone()),
            ("elements", Transaction { ops: elems }),
            ("rest", Transaction { ops: rest }),
        ];
        for _ in 0..n.parse().unwrap_or(10) {
            for (what, tx) in &parts {
                let t = Instant::now();
                let b = nftpol::netlink::batch::encode(tx).expect("encode");
                println!("encode {what}: {} ({} bytes)", ms(t.elapsed()), b.buf.len());
            }
        }
        return;
    }
    if let Some(why) = nftpol_test_support::privilege::missing_privilege() {
        eprintln!("netlink bench: {why}; skipped");
        return;
    }
    // Everything below runs in a scratch network namespace (this thread,
    // and every thread it starts, enters it; it is removed on return).
    let netns = match nftpol_test_support::Netns::try_create("netlink-bench") {
        Ok(ns) => ns,
        Err(e) => panic!("netlink bench: {e}"),
    };
    if let Err(e) = netns.enter() {
        panic!("netlink bench: {e}");
    }
    // Profiling aid: N one-element add/delete pairs on the full table.
    if let Ok(n) = std::env::var("NFTPOL_BENCH_ELEM_LOOP") {
        let pods = env_usize("NFTPOL_BENCH_PODS", 1000);
        let mut s = Session::open().expect("netlink session");
        s.send(&diff::create(&ruleset(pods))).expect("load");
        let set = std::env::var("NFTPOL_BENCH_SET").unwrap_or_else(|_| "nam4_p0".into());
        let e = if set.starts_with("tcp") {
            Element::PortRange(9999, 9999)
        } else {
            Element::AddrProtoPort(v4(10, 50, 0, 1), l4::TCP, 9999)
        };
        let t = Instant::now();
        let n: usize = n.parse().unwrap_or(1000);
        for _ in 0..n {
            for op in [
                Op::AddElements {
                    set: set.clone(),
                    elements: vec![e.clone()],
                },
                Op::DelElements {
                    set: set.clone(),
                    elements: vec![e.clone()],
                },
            ] {
                s.send(&Transaction { ops: vec![op] }).expect("element");
            }
        }
        println!(
            "{pods} pods, set {set}: {:?} per batch",
            t.elapsed() / (2 * n as u32)
        );
        return;
    }
    let runs = env_usize("NFTPOL_BENCH_RUNS", 5);
    let small = env_usize("NFTPOL_BENCH_SMALL_RUNS", 21);
    let dir = std::env::temp_dir().join(format!("nftpol-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut rows: Vec<Row> = Vec::new();

    let big = ruleset(1000);
    let script = render_script(&big);
    let script_path = dir.join("full.nft");
    write(&script_path, &script);
    let tx = diff::create(&big);
    let mut s = Session::open().expect("netlink session");

    // --- full apply, per-message acks and END-only acks interleaved run
    // by run, so the machine's noise hits both alike ---
    let (mut nl, mut build, mut kernel, mut nf) = (vec![], vec![], vec![], vec![]);
    let mut nl_each = vec![];
    let mut msgs = (0, 0);
    for _ in 0..runs {
        s.cleanup().expect("cleanup");
        s.set_ack_each(true);
        let t = Instant::now();
        s.send(&tx).expect("full apply, ack per message");
        nl_each.push(t.elapsed());
        s.cleanup().expect("cleanup");
        s.set_ack_each(false);
        let t = Instant::now();
        let r = s.send(&tx).expect("full apply");
        nl.push(t.elapsed());
        build.push(r.build);
        kernel.push(r.kernel);
        msgs = (r.messages, r.bytes);
        s.cleanup().expect("cleanup");
        nf.push(nft_file(&script_path));
    }
    let nl_each = median(nl_each);
    let (nl, build, kernel, nf) = (median(nl), median(build), median(kernel), median(nf));
    let overhead = build.as_secs_f64() / kernel.as_secs_f64();
    rows.push(Row {
        what: format!(
            "full apply (END-only acks, the default): {} chains, {} rules, {} elements ({} messages, {:.1} MB; nft text {:.1} MB)",
            big.chains.len(),
            big.rule_count(),
            big.element_count(),
            msgs.0,
            msgs.1 as f64 / 1e6,
            script.len() as f64 / 1e6
        ),
        netlink: nl,
        nft: Some(nf),
        note: format!(
            "{:.2}x faster (goal >= 1.7x); build {} = {:.1}% of kernel {} (goal < 15%)",
            nf.as_secs_f64() / nl.as_secs_f64(),
            ms(build),
            overhead * 100.0,
            ms(kernel)
        ),
    });
    rows.push(Row {
        what: "full apply, the same batch with an ack per message (`Session::set_ack_each(true)`)"
            .into(),
        netlink: nl_each,
        nft: Some(nf),
        note: format!(
            "{:.2}x faster; END-only is {:.1}% faster",
            nf.as_secs_f64() / nl_each.as_secs_f64(),
            (1.0 - nl.as_secs_f64() / nl_each.as_secs_f64()) * 100.0
        ),
    });

    // Leave the full table loaded (as netlink made it) for the rest.
    s.cleanup().expect("cleanup");
    s.send(&tx).expect("load");

    // --- read-back ---
    let mut rb = vec![];
    for _ in 0..runs {
        let t = Instant::now();
        let got = s.read_table().expect("read back");
        rb.push(t.elapsed());
        assert_eq!(
            got.as_ref(),
            Some(&big),
            "read-back equals what was applied"
        );
    }
    let mut lr = vec![];
    let mut bytes = 0;
    for _ in 0..runs {
        let (d, n) = nft_list(&["list", "ruleset"]);
        lr.push(d);
        bytes = n;
    }
    let (rb, lr) = (median(rb), median(lr));
    rows.push(Row {
        what: format!(
            "read back the whole table (nft: `nft list ruleset`, {:.1} MB)",
            bytes as f64 / 1e6
        ),
        netlink: rb,
        nft: Some(lr),
        note: format!(
            "{:.2}x faster (goal > 1x)",
            lr.as_secs_f64() / rb.as_secs_f64()
        ),
    });

    // --- 1-element update, at 100k and at 1k elements ---
    // An address element for `pod4_*` sets, a named-port entry otherwise.
    let elem_for = |set: &str, i: usize| {
        let a = v4(10, 50, (i / 256) as u8, (i % 256) as u8);
        if set.starts_with("pod4") {
            Element::Addr(a)
        } else {
            Element::AddrProtoPort(a, l4::TCP, 9999)
        }
    };
    // Netlink: `n` rounds of (add one element, delete it), each a batch,
    // back to back (warm), median over rounds of the add's time; nft:
    // `small` runs of `nft -f` adding one element, median.
    let one_elem = |s: &mut Session, rs_set: &str, n: usize| -> (Duration, Duration) {
        let mut nl = vec![];
        for i in 0..n {
            let e = elem_for(rs_set, i);
            let add = Transaction {
                ops: vec![Op::AddElements {
                    set: rs_set.into(),
                    elements: vec![e.clone()],
                }],
            };
            let t = Instant::now();
            s.send(&add).expect("add element");
            nl.push(t.elapsed());
            s.send(&Transaction {
                ops: vec![Op::DelElements {
                    set: rs_set.into(),
                    elements: vec![e],
                }],
            })
            .expect("del element");
        }
        let mut nf = vec![];
        for i in 0..small {
            let e = policy_compiler::render::render_element(&elem_for(rs_set, i));
            let p = dir.join("elem.nft");
            write(&p, &format!("add element inet nftpol {rs_set} {{ {e} }}\n"));
            nf.push(nft_file(&p));
            write(
                &p,
                &format!("delete element inet nftpol {rs_set} {{ {e} }}\n"),
            );
            nft_file(&p);
        }
        (median(nl), median(nf))
    };
    let warm = small * 20;
    let (e100k, e100k_nft) = one_elem(&mut s, "pod4_p500", warm);
    // The kernel finds a set by name walking the table's list of sets in
    // creation order; nam4_p0 is the first set created.
    let (e100k_first, _) = one_elem(&mut s, "nam4_p0", warm);

    // The same through the agent's path: in-memory diff against the
    // committed state + the batch (no read-back).
    let mut applier = Applier::new().expect("applier");
    applier.apply(&big).expect("prime applier");
    let mut with_one = big.clone();
    let mut ap = vec![];
    for i in 0..small {
        if let Some(set) = with_one.sets.get_mut("pod4_p500") {
            set.elements
                .insert(Element::Addr(v4(10, 51, (i / 256) as u8, (i % 256) as u8)));
        }
        // The agent hands over the ruleset it just compiled; the copy
        // stands for that compile and is not timed.
        let owned = with_one.clone();
        let t = Instant::now();
        let r = applier.apply_owned(owned).expect("applier one element");
        ap.push(t.elapsed());
        assert_eq!(r.summary, "+1 element");
    }
    let ap = median(ap);

    // --- one-chain replacement (flush + 10 rules) ---
    let chain = "ing_bench_p500";
    let mut rules = big.chains[chain].rules.clone();
    let mut nl_chain = vec![];
    let mut nf_chain = vec![];
    // Alternate between two rule lists so every run changes something.
    let variant = |rules: &mut Vec<Rule>, i: usize| {
        if let Some(Match::DPort { lo, hi }) = rules[0].matches.get_mut(2) {
            *lo = 80 + (i % 2) as u16 * 1000;
            *hi = *lo;
        }
    };
    // Netlink back to back (warm), then nft.
    for i in 0..small * 5 {
        variant(&mut rules, i);
        let tx = Transaction {
            ops: vec![
                Op::FlushChain { name: chain.into() },
                Op::AddRules {
                    chain: chain.into(),
                    rules: rules.clone(),
                },
            ],
        };
        let t = Instant::now();
        s.send(&tx).expect("replace chain");
        nl_chain.push(t.elapsed());
    }
    for i in 0..small {
        variant(&mut rules, i);
        let mut text = format!("flush chain inet nftpol {chain}\n");
        for r in &rules {
            text.push_str(&format!(
                "add rule inet nftpol {chain} {}\n",
                render_rule(r)
            ));
        }
        let p = dir.join("chain.nft");
        write(&p, &text);
        nf_chain.push(nft_file(&p));
    }
    let (nl_chain, nf_chain) = (median(nl_chain), median(nf_chain));
    // The same replacement with rules that name no set: isolates the
    // kernel's by-name set lookups (a walk of the table's 3,000 sets).
    let plain: Vec<Rule> = (0..9u16)
        .map(|k| Rule {
            matches: vec![
                Match::L4Proto(l4::TCP),
                Match::DPort {
                    lo: 80 + k,
                    hi: 80 + k,
                },
            ],
            verdict: Verdict::Accept,
            comment: Some(format!("bench/plain{k} ingress[0]")),
        })
        .chain(std::iter::once(Rule {
            matches: vec![],
            verdict: Verdict::Drop,
            comment: None,
        }))
        .collect();
    let mut nl_plain = vec![];
    for _ in 0..small * 5 {
        let tx = Transaction {
            ops: vec![
                Op::FlushChain { name: chain.into() },
                Op::AddRules {
                    chain: chain.into(),
                    rules: plain.clone(),
                },
            ],
        };
        let t = Instant::now();
        s.send(&tx).expect("replace chain (no sets)");
        nl_plain.push(t.elapsed());
    }
    let nl_plain = median(nl_plain);

    // --- acks on small incremental batches: the same batches alternately
    // with an ack per message and END-only, back to back (warm) ---
    let ab = |s: &mut Session,
              n: usize,
              what: &str,
              make: &dyn Fn(usize) -> (Transaction, Transaction)| {
        let (mut each, mut end) = (vec![], vec![]);
        for i in 0..n * 2 {
            let (tx, undo) = make(i / 2);
            s.set_ack_each(i % 2 == 0);
            let t = Instant::now();
            s.send(&tx).expect(what);
            let d = t.elapsed();
            if i % 2 == 0 {
                each.push(d)
            } else {
                end.push(d)
            }
            s.send(&undo).expect(what);
        }
        s.set_ack_each(false);
        (median(each), median(end))
    };
    let one_add = |i: usize| {
        let e = vec![elem_for("pod4_p500", i)];
        (
            Transaction {
                ops: vec![Op::AddElements {
                    set: "pod4_p500".into(),
                    elements: e.clone(),
                }],
            },
            Transaction {
                ops: vec![Op::DelElements {
                    set: "pod4_p500".into(),
                    elements: e,
                }],
            },
        )
    };
    // A peer pod that several policies allow: one element in each of ten
    // sets (ten messages).
    let ten_sets = |i: usize| {
        let sets: Vec<String> = (0..10).map(|k| format!("pod4_p{}", 100 * k + 7)).collect();
        let add = sets
            .iter()
            .map(|set| Op::AddElements {
                set: set.clone(),
                elements: vec![elem_for(set, i)],
            })
            .collect();
        let del = sets
            .iter()
            .map(|set| Op::DelElements {
                set: set.clone(),
                elements: vec![elem_for(set, i)],
            })
            .collect();
        (Transaction { ops: add }, Transaction { ops: del })
    };
    let base_rules = big.chains["ing_bench_p500"].rules.clone();
    let chain_swap = |i: usize| {
        let mut a = base_rules.clone();
        variant(&mut a, 2 * i);
        let mut b = base_rules.clone();
        variant(&mut b, 2 * i + 1);
        let tx = |rules: Vec<Rule>| Transaction {
            ops: vec![
                Op::FlushChain {
                    name: "ing_bench_p500".into(),
                },
                Op::AddRules {
                    chain: "ing_bench_p500".into(),
                    rules,
                },
            ],
        };
        (tx(a), tx(b))
    };
    let ack_rows = [
        (
            "add 1 element (1 message)",
            ab(&mut s, warm, "one element", &one_add),
        ),
        (
            "add 1 element to each of 10 sets (10 messages)",
            ab(&mut s, warm, "ten sets", &ten_sets),
        ),
        (
            "replace one chain: flush + 10 rules (11 messages)",
            ab(&mut s, small * 5, "chain", &chain_swap),
        ),
    ];
    for (what, (each, end)) in ack_rows {
        rows.push(Row {
            what: format!(
                "{what}, 101k-element table: END-only acks (ack per message: {})",
                ms(each)
            ),
            netlink: end,
            nft: None,
            note: format!(
                "END-only {:+.1}% vs ack per message",
                (end.as_secs_f64() / each.as_secs_f64() - 1.0) * 100.0
            ),
        });
    }

    // --- small ruleset: 10 pods, about 1k elements ---
    let little = ruleset(10);
    s.cleanup().expect("cleanup");
    s.send(&diff::create(&little)).expect("load small");
    let (e1k, _) = one_elem(&mut s, "pod4_p5", warm);
    let (e1k_first, _) = one_elem(&mut s, "nam4_p0", warm);
    let mut nl_plain_small = vec![];
    for _ in 0..small * 5 {
        let tx = Transaction {
            ops: vec![
                Op::FlushChain {
                    name: "ing_bench_p5".into(),
                },
                Op::AddRules {
                    chain: "ing_bench_p5".into(),
                    rules: plain.clone(),
                },
            ],
        };
        let t = Instant::now();
        s.send(&tx).expect("replace chain in small table");
        nl_plain_small.push(t.elapsed());
    }
    let nl_plain_small = median(nl_plain_small);
    s.cleanup().expect("cleanup");

    rows.push(Row {
        what: format!("add 1 element, table of {} elements", big.element_count()),
        netlink: e100k,
        nft: Some(e100k_nft),
        note: format!(
            "{:.0}x faster (goal >= 30x)",
            e100k_nft.as_secs_f64() / e100k.as_secs_f64()
        ),
    });
    rows.push(Row {
        what: format!(
            "add 1 element, table of {} elements",
            little.element_count()
        ),
        netlink: e1k,
        nft: None,
        note: format!(
            "100k / 1k ratio {:.2} (goal <= 1.5)",
            e100k.as_secs_f64() / e1k.as_secs_f64()
        ),
    });
    rows.push(Row {
        what: format!(
            "add 1 element to the first-created set, {} vs {} elements",
            big.element_count(),
            little.element_count()
        ),
        netlink: e100k_first,
        nft: None,
        note: format!(
            "{} at 1k; ratio {:.2} (goal <= 1.5)",
            ms(e1k_first),
            e100k_first.as_secs_f64() / e1k_first.as_secs_f64()
        ),
    });
    rows.push(Row {
        what: "add 1 element via `Applier::apply_owned` (in-memory diff of the 100k table against the committed state + batch)".into(),
        netlink: ap,
        nft: Some(e100k_nft),
        note: format!("{:.0}x faster", e100k_nft.as_secs_f64() / ap.as_secs_f64()),
    });
    rows.push(Row {
        what: "replace one chain: flush + 10 rules (nft: `nft -f` of the same 11 commands)".into(),
        netlink: nl_chain,
        nft: Some(nf_chain),
        note: format!(
            "{:.0}x faster (goal >= 30x)",
            nf_chain.as_secs_f64() / nl_chain.as_secs_f64()
        ),
    });

    rows.push(Row {
        what: "replace one chain: flush + 10 rules that name no set".into(),
        netlink: nl_plain,
        nft: None,
        note: format!(
            "no set lookups; {} in the {}-chain table (the kernel re-validates every chain reachable from the base chains after a rule change)",
            ms(nl_plain_small),
            little.chains.len()
        ),
    });

    println!("| operation | netlink (median) | nft -f / nft list (median) | result |");
    println!("| --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.what,
            ms(r.netlink),
            r.nft.map(ms).unwrap_or_else(|| "-".into()),
            r.note
        );
    }
    println!("\nruns: {runs} full, {small} incremental");
    let _ = std::fs::remove_dir_all(&dir);
}
