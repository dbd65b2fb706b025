#!/bin/sh
# Full programming of one busy node, three ways, interleaved in one run so
# the machine's noise hits all alike (root; each run in a fresh network
# namespace nftpol-t-bench-node-*, deleted again, even on failure):
#   new:     `nftpol apply` of the fixture (compile + netlink batch),
#   new-nft: `nft -f` of today's `nftpol compile` output for it,
#   old-nft: `nft -f` of an older compile output for the same fixture.
#
# Usage: benches/node/apply.sh NFTPOL FIXTURE.yaml OLD.nft [RUNS]
#   FIXTURE.yaml from benches/node/fixture.py; OLD.nft from
#   `nftpol compile -m FIXTURE.yaml --node-name node-1` of the older build.
set -eu
[ $# -ge 3 ] || { sed -n '2,12p' "$0"; exit 2; }
nftpol=$1 fixture=$2 old=$3 runs=${4:-7}
work=$(mktemp -d)
ns="nftpol-t-bench-node-$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
"$nftpol" compile -m "$fixture" --node-name node-1 > "$work/new.nft"
now() { date +%s%N; }
timed() { # LABEL CMD...: one run in a fresh namespace, ms appended to $work/LABEL
    label=$1; shift
    ip netns add "$ns"
    t0=$(now)
    ip netns exec "$ns" "$@" > /dev/null 2>&1
    t1=$(now)
    ip netns exec "$ns" nft list table inet nftpol | wc -l >> "$work/$label.lines"
    ip netns del "$ns"
    echo $(( (t1 - t0) / 1000000 )) >> "$work/$label"
}
i=0
while [ "$i" -lt "$runs" ]; do
    timed new "$nftpol" apply -m "$fixture" --node-name node-1
    timed new-nft nft -f "$work/new.nft"
    timed old-nft nft -f "$old"
    i=$((i + 1))
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
for label in new new-nft old-nft; do
    printf '%-8s median %5s ms  runs: %s  (table: %s lines)\n' "$label" "$(median "$work/$label")" \
        "$(tr '\n' ' ' < "$work/$label")" "$(sort -u "$work/$label.lines" | tr '\n' ' ')"
done
