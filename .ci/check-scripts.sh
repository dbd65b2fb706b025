#!/usr/bin/env bash
# Offline checks of everything a kind cluster would receive, since CI has
# no container engine and no apiserver (a few seconds):
#
#   1. every shell script of the kind e2e and of CI passes `bash -n` and the
#      linter (shellcheck);
#   2. run-netpol-e2e.sh runs with DRY_RUN=1 for every IP family and
#      kube-proxy mode, with the stub tools of tests/e2e/kind/stubs, and
#      writes the kind configs and manifests it would use;
#   3. deploy/ and those rendered manifests validate against the
#      Kubernetes OpenAPI schemas of the targeted version (versions.env's
#      K8S_VERSION), strictly (unknown fields fail), with kubernetes-validate;
#   4. the kind configs, committed and rendered, validate with
#      .ci/validate-kind-config.py.
#
# kubernetes-validate lives in a virtualenv that .ci/run installs
# (NFTPOL_CI_VENV, default ~/.cache/nftpol-ci/venv). Without it the schema
# checks are skipped with a note, except under CI=true where that fails.
# The order of operations of the script is checked by
# `cargo test --test e2e kind_script`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
VENV="${NFTPOL_CI_VENV:-${HOME}/.cache/nftpol-ci/venv}"
failed=0
fail() {
  echo "FAIL $*"
  failed=1
}

mapfile -t scripts < <(
  find tests/e2e/kind deploy .ci -type f \( -name '*.sh' -o -path '*/stubs/stub' \) | sort
)
for s in "${scripts[@]}"; do
  bash -n "${s}" || fail "bash -n ${s}"
done
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck -x "${scripts[@]}" .ci/run || fail "shellcheck"
elif [[ "${CI:-}" == "true" ]]; then
  fail "shellcheck is not installed (.ci/run installs it)"
else
  echo "note: shellcheck not installed; only bash -n was run"
fi

if [[ ! -x "${VENV}/bin/kubernetes-validate" ]]; then
  if [[ "${CI:-}" == "true" ]]; then
    fail "kubernetes-validate missing in ${VENV} (.ci/run installs it)"
  else
    echo "note: no kubernetes-validate in ${VENV}; run .ci/run once for the schema checks"
  fi
  echo "checked ${#scripts[@]} scripts"
  exit "${failed}"
fi

k8s="$(sed -n 's/^K8S_VERSION=v//p' tests/e2e/kind/versions.env)"
schema_version="${k8s%.*}.0"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

runs=0
for family in ipv4 ipv6 dual; do
  for mode in iptables nftables; do
    out="${work}/${family}-${mode}"
    if ! env -i PATH="${ROOT}/tests/e2e/kind/stubs:/usr/bin:/bin" HOME="${work}" \
      DRY_RUN=1 IP_FAMILY="${family}" KUBEPROXY_MODE="${mode}" WORK_DIR="${out}" \
      bash tests/e2e/kind/run-netpol-e2e.sh >"${out}.log" 2>&1; then
      cat "${out}.log"
      fail "DRY_RUN=1 IP_FAMILY=${family} KUBEPROXY_MODE=${mode} tests/e2e/kind/run-netpol-e2e.sh"
    fi
    runs=$((runs + 1))
  done
done

mapfile -t manifests < <(
  find deploy "${work}" -path "${work}/*/manifests/*" -name '*.yaml' -o \
    -path 'deploy/*' \( -name '*.yaml' -o -name '*.yml' \) | sort
)
mapfile -t kind_configs < <(
  find tests/e2e/kind -maxdepth 1 -name 'cluster-*.yaml'
  find "${work}" -name kind-config.yaml
)
if ! "${VENV}/bin/kubernetes-validate" --strict --quiet -k "${schema_version}" "${manifests[@]}"; then
  fail "manifests against the Kubernetes ${schema_version} OpenAPI schemas"
fi
"${VENV}/bin/python" .ci/validate-kind-config.py "${kind_configs[@]}" || fail "kind configs"

echo "checked ${#scripts[@]} scripts, ${runs} dry runs, ${#manifests[@]} manifests" \
  "(Kubernetes ${schema_version} schemas), ${#kind_configs[@]} kind configs"
exit "${failed}"
