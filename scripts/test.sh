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
if [ -x .ci/check-scripts.sh ]; then
  ./.ci/check-scripts.sh
fi
