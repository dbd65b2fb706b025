#!/usr/bin/env python3
"""Where a new connection's CPU time goes, configuration by configuration,
from a system profile taken while the data-plane bench ran.

The bench names the threads that make and serve its connections after the
configuration (`dp<N>-cli`, `dp<N>-lat`, `dp<N>-srv`) and ends its report
with a table of tags, configurations and connections made. This kernel
charges softirq work to the task it interrupted, so a thread's samples
hold the node's forwarding and the far pod's stack its sends set off.
Samples of each tag are divided by that tag's connections: microseconds
of CPU per connection, split into nftables chains (by base-chain hook and
by the function the sample was in), conntrack, the rest of the netfilter
hook path, and everything else (sockets, TCP, veth, scheduling).

Usage (root; `perf` must be installed):

    perf record -a -g -F 1999 -o /tmp/dp.perf -- \\
        cargo bench --bench dataplane > /tmp/dp.md
    perf script -i /tmp/dp.perf -F comm,period,ip,sym \\
        | python3 benches/dataplane/profile.py /tmp/dp.md

Stdin is `perf script` output with call chains; the argument is the
bench's report. Prints markdown.
"""

import collections
import re
import sys

# Base-chain entry points: which hook a sample's chain was called from.
HOOKS = {
    "nft_do_chain_netdev": "netdev ingress (L2 guard)",
    "nft_do_chain_inet_ingress": "inet ingress (source validation)",
    "nft_do_chain_inet": "inet forward/input",
    "nft_do_chain_ipv4": "ip (iptables-nft)",
}
CONNTRACK = re.compile(
    r"^(nf_conntrack|nf_ct_|__nf_ct_|__nf_conntrack|ipv4_conntrack|ipv4_confirm|"
    r"nf_confirm|nf_defrag|ipv4_conntrack_defrag|tcp_packet|nf_tcp_|"
    r"destroy_conntrack|init_conntrack|resolve_normal_ct|hash_conntrack|"
    r"____nf_conntrack_find|nf_nat_)"
)
IPTABLES = re.compile(r"^(ipt_do_table|ip_set_|hash_ip4_|ip_set_test|set_match)")
TAG = re.compile(r"^(dp\d+)-(cli|lat|srv)$")


def read_report(path):
    """Tag -> (configuration, connections) from the bench's last table."""
    tags = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^\| (dp\d+) \| (.*) \| (\d+) \|$", line.strip())
            if m:
                tags[m.group(1)] = (m.group(2), int(m.group(3)))
    if not tags:
        sys.exit(f"{path}: no tag table (is it the data-plane bench's report?)")
    return tags


def samples(stream):
    """(comm, period, [symbols leaf first]) for each sample."""
    comm, period, stack = None, 0, []
    for line in stream:
        if not line.strip():
            if comm is not None:
                yield comm, period, stack
            comm, period, stack = None, 0, []
            continue
        if not line.startswith("\t"):
            # "comm period", comm right-aligned (it may hold spaces; the
            # period is last); call-chain frames start with a tab.
            head = line.rstrip().rsplit(None, 1)
            comm = head[0] if len(head) == 2 else line.strip()
            try:
                period = int(head[-1].rstrip(":"))
            except ValueError:
                period = 0
            stack = []
        else:
            parts = line.split()
            sym = parts[1] if len(parts) > 1 else parts[0]
            stack.append(sym.split("+")[0])
    if comm is not None:
        yield comm, period, stack


def bucket(stack):
    """The one bucket a sample counts in, and for nftables its hook."""
    hook = next((HOOKS[s] for s in stack if s in HOOKS), None)
    if hook or any(s == "nft_do_chain" for s in stack):
        return "nftables chains", hook or "other"
    if any(IPTABLES.match(s) for s in stack):
        return "iptables + ipset", None
    if any(CONNTRACK.match(s) for s in stack):
        return "conntrack", None
    if "nf_hook_slow" in stack:
        return "netfilter hook path", None
    return "rest", None


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    tags = read_report(sys.argv[1])
    ns = collections.defaultdict(lambda: collections.Counter())
    hooks = collections.defaultdict(lambda: collections.Counter())
    leaves = collections.defaultdict(lambda: collections.Counter())
    hook_leaves = collections.defaultdict(lambda: collections.Counter())
    others = collections.Counter()
    for comm, period, stack in samples(sys.stdin):
        m = TAG.match(comm)
        if not m or m.group(1) not in tags:
            others[comm.split("/")[0]] += period
            continue
        tag = m.group(1)
        b, hook = bucket(stack)
        ns[tag][b] += period
        ns[tag]["total"] += period
        if b == "nftables chains":
            hooks[tag][hook] += period
            leaves[tag][stack[0] if stack else "?"] += period
            hook_leaves[(tag, hook)][stack[0] if stack else "?"] += period
    cols = [
        "total",
        "nftables chains",
        "conntrack",
        "netfilter hook path",
        "iptables + ipset",
        "rest",
    ]
    print("CPU µs per connection (samples of the configuration's threads / connections):\n")
    print("| configuration | connections | " + " | ".join(cols) + " |")
    print("| --- | --- |" + " --- |" * len(cols))
    for tag in sorted(tags, key=lambda t: int(t[2:])):
        name, conns = tags[tag]
        per = lambda b: ns[tag][b] / 1e3 / max(conns, 1)
        print(f"| {name} | {conns} | " + " | ".join(f"{per(b):.2f}" for b in cols) + " |")
    print("\nnftables chains by base-chain hook, µs per connection:\n")
    names = sorted({h for t in hooks for h in hooks[t]})
    print("| configuration | " + " | ".join(names) + " | top functions (µs) |")
    print("| --- |" + " --- |" * (len(names) + 1))
    for tag in sorted(tags, key=lambda t: int(t[2:])):
        name, conns = tags[tag]
        if not hooks[tag]:
            continue
        top = ", ".join(
            f"{f} {p / 1e3 / max(conns, 1):.2f}" for f, p in leaves[tag].most_common(6)
        )
        print(
            f"| {name} | "
            + " | ".join(f"{hooks[tag][h] / 1e3 / max(conns, 1):.2f}" for h in names)
            + f" | {top} |"
        )
    print("\nnftables chains by hook and function (the expression evaluators, the")
    print("chain walk, the packet-info set-up), µs per connection:\n")
    print("| configuration | hook | functions (µs) |")
    print("| --- | --- | --- |")
    for tag in sorted(tags, key=lambda t: int(t[2:])):
        name, conns = tags[tag]
        for h in names:
            c = hook_leaves.get((tag, h))
            if not c:
                continue
            top = ", ".join(f"{f} {p / 1e3 / max(conns, 1):.2f}" for f, p in c.most_common(8))
            print(f"| {name} | {h} | {top} |")
    total = sum(others.values()) + sum(n["total"] for n in ns.values())
    soft = sum(p for c, p in others.items() if c.startswith("ksoftirqd"))
    print(
        f"\nksoftirqd held {soft / max(total, 1):.1%} of all samples (not charged to any "
        "configuration); other processes' samples are left out."
    )


if __name__ == "__main__":
    main()
