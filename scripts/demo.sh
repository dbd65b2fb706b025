#!/usr/bin/env bash
# Builds nftpol and compiles every bundled example for node-1, printing the
# nft scripts and one reachability matrix. Installs the build dependencies
# first when run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! pkg-config --exists libnftnl libmnl 2>/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    nftables libnftnl-dev libmnl-dev iproute2 pkg-config >/dev/null
fi
cargo build --release --quiet
for f in examples/policies/*.yaml; do
  echo "### nftpol compile --manifests $f --node-name node-1"
  ./target/release/nftpol compile --manifests "$f" --node-name node-1
  echo
done
echo "### nftpol matrix --manifests examples/policies/01-web-allow.yaml --port 80/TCP --port 443/TCP"
./target/release/nftpol matrix --manifests examples/policies/01-web-allow.yaml --port 80/TCP --port 443/TCP
