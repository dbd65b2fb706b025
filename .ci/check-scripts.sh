#!/usr/bin/env bash
# Static checks for what CI cannot run here (no container engine, no
# apiserver): every shell script under tests/e2e/kind and deploy passes
# `bash -n` and (when installed) shellcheck, and every YAML file under
# deploy and tests/e2e/kind parses. Run from anywhere; exits non-zero on
# the first class of failure after reporting all files.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
failed=0

mapfile -t scripts < <(find tests/e2e/kind deploy -type f -name '*.sh' | sort)
mapfile -t yamls < <(find deploy tests/e2e/kind -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)

for s in "${scripts[@]}"; do
  if ! bash -n "${s}"; then
    echo "FAIL bash -n ${s}"
    failed=1
  fi
done

if command -v shellcheck >/dev/null 2>&1; then
  if [[ ${#scripts[@]} -gt 0 ]] && ! shellcheck -x "${scripts[@]}" .ci/check-scripts.sh; then
    echo "FAIL shellcheck"
    failed=1
  fi
else
  echo "note: shellcheck not installed; only bash -n was run"
fi

# YAML: PyYAML when present (every document of every file), otherwise the
# Rust test `e2e::deploy_manifests_parse`, which parses the same files with
# serde_yaml and also checks the RBAC stays read-only.
if python3 -c 'import yaml' >/dev/null 2>&1; then
  if ! python3 - "${yamls[@]}" <<'PY'
import sys, yaml
bad = 0
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        if not docs:
            raise ValueError("no YAML document")
        for d in docs:
            if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
                raise ValueError("a document without kind/apiVersion")
    except Exception as e:  # report every file, then fail
        print(f"FAIL yaml {path}: {e}")
        bad = 1
sys.exit(bad)
PY
  then
    failed=1
  fi
else
  echo "note: PyYAML not installed; YAML is checked by: cargo test --test e2e deploy_manifests_parse"
  if ! cargo test --quiet --test e2e deploy_manifests_parse; then
    failed=1
  fi
fi

echo "checked ${#scripts[@]} scripts and ${#yamls[@]} YAML files"
exit "${failed}"
