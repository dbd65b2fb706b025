#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, the unit, property, golden,
# kernel and e2e tests (kernel and e2e tests need root; without it they
# skip with a message, or fail when CI=true), and the syntax checks of the
# kind/deploy scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
# A longer bounded fuzz pass over the netlink read-back parser (about 20 s
# on CI; docs/FUZZING.md). NFTPOL_CI_FUZZ_CASES sets inputs per target.
NFTPOL_FUZZ_CASES="${NFTPOL_CI_FUZZ_CASES:-4000}" \
  cargo test -p nftpol --lib netlink::fuzz_tests -- --nocapture
if [ -x .ci/check-scripts.sh ]; then
  ./.ci/check-scripts.sh
fi
