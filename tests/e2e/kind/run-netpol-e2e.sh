#!/usr/bin/env bash
# Runs the upstream Kubernetes NetworkPolicy e2e suite against nftpol on
# kind clusters, the way kube-network-policies does in its CI. For each
# pass (one for ipv4 and ipv6; two for dual, see below):
#
#   1. refuse to go on if a kind cluster of that name exists (this script
#      only ever deletes a cluster it created itself);
#   2. create the cluster from tests/e2e/kind/cluster-<pass>.yaml (one
#      control plane, two workers, kindnet as the CNI) with its own
#      kubeconfig under WORK_DIR; the user's kubeconfig is never touched;
#   3. swap kindnet's image for one without NetworkPolicy support: since
#      kind v0.24 kindnetd embeds a NetworkPolicy controller that would
#      enforce the same policies as nftpol and hide nftpol's bugs. The
#      table the embedded controller left on each node is deleted too;
#   4. build the nftpol image (deploy/Dockerfile) and load it into kind;
#   5. apply every manifest under deploy/ in dependency order
#      (CustomResourceDefinitions, ServiceAccounts, RBAC, then workloads)
#      and wait for the DaemonSet;
#   6. run e2e.test through ginkgo focused on the sig-network Netpol tests
#      (SCTP included);
#   7. delete the cluster (unless KEEP_CLUSTER=1); on failure, export the
#      kind logs first.
#
# The upstream suite probes pods through their Services' ClusterIPs, so it
# only ever probes a cluster's primary IP family. IP_FAMILY=dual therefore
# runs two dual-stack passes: IPv4 primary (cluster-dual-ipv4.yaml), then
# IPv6 primary (cluster-dual-ipv6.yaml).
#
# kube-proxy modes: iptables and nftables. Both DNAT a Service's traffic in
# prerouting, before nftpol's forward and input hooks, so nftpol judges the
# backend pod. IPVS is refused: it rewrites Service traffic after the input
# hook, so nftpol would judge the ClusterIP and miss same-node ingress.
#
# Needs a Linux host with docker (the kind provider; podman is not
# supported: `kind load docker-image` reads from docker), kind
# (KIND_VERSION exactly), kubectl, and the Kubernetes test binaries for K8S_VERSION: an e2e.test on
# PATH whose --version is K8S_VERSION (with ginkgo beside it), else the
# cache WORK_DIR/k8s-test/K8S_VERSION, else a checksum-verified download
# into that cache (DOWNLOAD=1).
#
# Environment (all optional; versions default to tests/e2e/kind/versions.env):
#   CLUSTER_NAME    kind cluster name; dual appends -dual-ipv4/-dual-ipv6 (nftpol-e2e)
#   IP_FAMILY       ipv4 | ipv6 | dual                            (ipv4)
#   KUBEPROXY_MODE  iptables | nftables                           (iptables)
#   KIND_VERSION    the kind CLI version required                 (versions.env)
#   K8S_VERSION     test binaries version                         (versions.env)
#   NODE_IMAGE      kind node image               (versions.env; kindest/node:K8S_VERSION
#                                                  when K8S_VERSION is overridden)
#   KINDNETD_IMAGE  kindnetd without NetworkPolicy support        (versions.env)
#   IMAGE           nftpol image tag to build and deploy          (nftpol:dev)
#   FOCUS           ginkgo focus regexp                           (Netpol)
#   SKIP            ginkgo skip regexp                            (none)
#   GINKGO_NODES    parallel ginkgo nodes                         (10)
#   WORK_DIR        kubeconfigs, reports, logs, test binaries     (<repo>/_artifacts)
#   DOWNLOAD        1 to download missing test binaries           (1)
#   KEEP_CLUSTER    1 to keep the cluster(s) after the run        (0)
#   DRY_RUN         1 to print every command (with the resolved versions)
#                   without creating, building or applying anything (0)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../../.." && pwd)"

log() { printf '>>> %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is required (see the header of $0)"
}

# versions.env holds the defaults; a variable already set in the
# environment wins.
NODE_IMAGE_FROM_ENV="${NODE_IMAGE:-}"
while IFS='=' read -r key value; do
  [[ -z "${key}" || "${key}" == \#* ]] && continue
  [[ "${key}" =~ ^[A-Z0-9_]+$ ]] || die "versions.env: bad line '${key}=${value}'"
  if [[ -z "${!key:-}" ]]; then
    printf -v "${key}" '%s' "${value}"
  fi
done <"${SCRIPT_DIR}/versions.env"
KIND_VERSION="${KIND_VERSION:?versions.env sets KIND_VERSION}"
K8S_VERSION="${K8S_VERSION:?versions.env sets K8S_VERSION}"
KINDNETD_IMAGE="${KINDNETD_IMAGE:?versions.env sets KINDNETD_IMAGE}"
# The pinned node image belongs to the pinned Kubernetes version; another
# K8S_VERSION gets kind's image of that version unless NODE_IMAGE is set.
if [[ -z "${NODE_IMAGE_FROM_ENV}" && "${NODE_IMAGE}" != "kindest/node:${K8S_VERSION}@"* ]]; then
  NODE_IMAGE="kindest/node:${K8S_VERSION}"
fi

CLUSTER_NAME="${CLUSTER_NAME:-nftpol-e2e}"
IP_FAMILY="${IP_FAMILY:-ipv4}"
KUBEPROXY_MODE="${KUBEPROXY_MODE:-iptables}"
IMAGE="${IMAGE:-nftpol:dev}"
FOCUS="${FOCUS:-Netpol}"
SKIP="${SKIP:-}"
GINKGO_NODES="${GINKGO_NODES:-10}"
WORK_DIR="${WORK_DIR:-${REPO_ROOT}/_artifacts}"
DOWNLOAD="${DOWNLOAD:-1}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
DRY_RUN="${DRY_RUN:-0}"

# The table kindnetd's embedded NetworkPolicy controller programs.
KINDNET_POLICY_TABLE="kindnet-network-policies"

# Prints a command and runs it, or only prints it under DRY_RUN=1.
run() {
  local line="+"
  local a
  for a in "$@"; do
    line+=" $(printf '%q' "${a}")"
  done
  printf '%s\n' "${line}"
  [[ "${DRY_RUN}" == "1" ]] && return 0
  "$@"
}

check_settings() {
  case "${IP_FAMILY}" in
    ipv4) PASSES=(ipv4) ;;
    ipv6) PASSES=(ipv6) ;;
    dual) PASSES=(dual-ipv4 dual-ipv6) ;;
    *) die "IP_FAMILY must be ipv4, ipv6 or dual, not '${IP_FAMILY}'" ;;
  esac
  case "${KUBEPROXY_MODE}" in
    iptables | nftables) ;;
    ipvs)
      die "KUBEPROXY_MODE=ipvs is not supported: IPVS rewrites Service traffic after the" \
        "input hook, where nftpol already judged the ClusterIP, and same-node replies leave" \
        "through output, so nftpol's verdicts would be wrong. Use iptables or nftables."
      ;;
    *) die "KUBEPROXY_MODE must be iptables or nftables, not '${KUBEPROXY_MODE}'" ;;
  esac
  [[ "${CLUSTER_NAME}" =~ ^[a-z0-9.-]+$ ]] ||
    die "CLUSTER_NAME '${CLUSTER_NAME}' is not a valid kind cluster name ([a-z0-9.-]+)"
  [[ "${K8S_VERSION}" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] ||
    die "K8S_VERSION must look like v1.33.1, not '${K8S_VERSION}'"
  K8S_MINOR="${BASH_REMATCH[1]}"
  if [[ "${KUBEPROXY_MODE}" == "nftables" && "${K8S_MINOR}" -lt 31 ]]; then
    die "kube-proxy's nftables mode needs Kubernetes v1.31 or later (K8S_VERSION=${K8S_VERSION})"
  fi
  case "${KIND_EXPERIMENTAL_PROVIDER:-docker}" in
    docker) ;;
    *) die "only kind's docker provider is supported (KIND_EXPERIMENTAL_PROVIDER=${KIND_EXPERIMENTAL_PROVIDER})" ;;
  esac
  [[ "${WORK_DIR}" == /* ]] || WORK_DIR="${PWD}/${WORK_DIR}"
}

check_tools() {
  need docker
  need kind
  need kubectl
  local kind_version
  kind_version="$(kind version | awk '{print $2}')"
  [[ "${kind_version}" == "${KIND_VERSION}" ]] ||
    die "kind ${kind_version:-(unknown)} found, ${KIND_VERSION} required (the node image" \
      "${NODE_IMAGE} is built for it); install kind ${KIND_VERSION} or set KIND_VERSION"
  local kubectl_version kubectl_minor
  kubectl_version="$(kubectl version --client -o json 2>/dev/null |
    sed -n 's/.*"gitVersion": *"\(v[^"]*\)".*/\1/p' | head -n1)"
  if [[ "${kubectl_version}" =~ ^v1\.([0-9]+)\. ]]; then
    kubectl_minor="${BASH_REMATCH[1]}"
    if ((kubectl_minor > K8S_MINOR + 1 || kubectl_minor < K8S_MINOR - 1)); then
      log "warning: kubectl ${kubectl_version} is outside the supported skew of ${K8S_VERSION}"
    fi
  else
    log "warning: cannot tell the kubectl client version"
  fi
  if [[ "${DRY_RUN}" != "1" ]]; then
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
      die "docker is installed but its daemon does not answer (docker version)"
  fi
}

# e2e.test reports the Kubernetes version it was built from.
e2e_version() {
  "$1" --version 2>/dev/null | awk 'NR == 1 {print $1}'
}

# Sets E2E_TEST and GINKGO to binaries built for K8S_VERSION: the pair on
# PATH when its e2e.test says so, else the per-version cache, else a
# download into that cache. A pair of another version is never used: the
# suite's expectations change between releases.
resolve_test_binaries() {
  local cache="${WORK_DIR}/k8s-test/${K8S_VERSION}"
  local found version
  found="$(command -v e2e.test 2>/dev/null || true)"
  if [[ -n "${found}" ]]; then
    version="$(e2e_version "${found}")"
    if [[ "${version}" == "${K8S_VERSION}" && -x "$(dirname "${found}")/ginkgo" ]]; then
      E2E_TEST="${found}"
      GINKGO="$(dirname "${found}")/ginkgo"
      E2E_SOURCE="PATH"
      return
    fi
    log "ignoring ${found}: it is ${version:-of unknown version}, K8S_VERSION is ${K8S_VERSION}" \
      "(or no ginkgo beside it)"
  fi
  E2E_TEST="${cache}/e2e.test"
  GINKGO="${cache}/ginkgo"
  if [[ -x "${E2E_TEST}" && -x "${GINKGO}" ]]; then
    version="$(e2e_version "${E2E_TEST}")"
    if [[ "${version}" == "${K8S_VERSION}" ]]; then
      E2E_SOURCE="cache"
      return
    fi
    log "cached ${E2E_TEST} is ${version:-of unknown version}, not ${K8S_VERSION}; downloading again"
  fi
  [[ "${DOWNLOAD}" == "1" ]] ||
    die "no e2e.test/ginkgo for ${K8S_VERSION} (on PATH or in ${cache}) and DOWNLOAD=0"
  need curl
  need tar
  need sha256sum
  local arch
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "unsupported architecture $(uname -m)" ;;
  esac
  local url="https://dl.k8s.io/${K8S_VERSION}/kubernetes-test-linux-${arch}.tar.gz"
  local tarball="${cache}/kubernetes-test.tar.gz"
  E2E_SOURCE="download ${url}"
  run mkdir -p "${cache}"
  run curl -fsSL -o "${tarball}" "${url}"
  run curl -fsSL -o "${tarball}.sha256" "${url}.sha256"
  if [[ "${DRY_RUN}" == "1" ]]; then
    printf '+ sha256sum --check (%s against %s)\n' "${tarball}" "${tarball}.sha256"
  else
    local sum
    read -r sum _ <"${tarball}.sha256"
    printf '%s  %s\n' "${sum}" "${tarball}" | sha256sum --check --quiet ||
      die "checksum mismatch for ${url}"
  fi
  run tar -xzf "${tarball}" -C "${cache}" --strip-components=3 \
    kubernetes/test/bin/ginkgo kubernetes/test/bin/e2e.test
  run rm -f "${tarball}" "${tarball}.sha256"
  if [[ "${DRY_RUN}" != "1" ]]; then
    version="$(e2e_version "${E2E_TEST}")"
    [[ "${version}" == "${K8S_VERSION}" ]] ||
      die "downloaded e2e.test reports ${version:-nothing}, not ${K8S_VERSION}"
  fi
}

# The cluster name of a pass: CLUSTER_NAME itself when there is one pass.
pass_cluster() {
  if [[ ${#PASSES[@]} -eq 1 ]]; then
    printf '%s' "${CLUSTER_NAME}"
  else
    printf '%s-%s' "${CLUSTER_NAME}" "$1"
  fi
}

# Copies cluster-<pass>.yaml with the chosen kube-proxy mode.
render_kind_config() {
  local pass="$1" out="$2"
  local src="${SCRIPT_DIR}/cluster-${pass}.yaml"
  [[ -f "${src}" ]] || die "missing kind config ${src}"
  sed "s/^  kubeProxyMode: .*/  kubeProxyMode: ${KUBEPROXY_MODE}/" "${src}" >"${out}"
  grep -qx "  kubeProxyMode: ${KUBEPROXY_MODE}" "${out}" ||
    die "${src}: no 'networking.kubeProxyMode' line to set"
}

# Apply order of a manifest file, from the kinds it holds: what others
# refer to goes first (CRDs, namespaces, identities, RBAC), workloads last.
manifest_rank() {
  local kinds k r max=0
  kinds="$(sed -n 's/^kind: *\([A-Za-z]*\).*/\1/p' "$1")"
  [[ -n "${kinds}" ]] || die "$1: no 'kind:' line"
  for k in ${kinds}; do
    case "${k}" in
      CustomResourceDefinition) r=0 ;;
      Namespace) r=1 ;;
      ServiceAccount) r=2 ;;
      ClusterRole | Role) r=3 ;;
      ClusterRoleBinding | RoleBinding) r=4 ;;
      DaemonSet | Deployment | StatefulSet | Job | Pod) r=9 ;;
      *) r=5 ;;
    esac
    if ((r > max)); then max=${r}; fi
  done
  printf '%s' "${max}"
}

# Writes deploy/**/*.yaml, with the DaemonSet pointed at IMAGE, into $1 as
# <rank>-<name>.yaml, so a plain sort gives the apply order.
render_manifests() {
  local out="$1" f rank
  mkdir -p "${out}"
  rm -f "${out}"/*.yaml
  while IFS= read -r f; do
    rank="$(manifest_rank "${f}")"
    local rel="${f#"${REPO_ROOT}/deploy/"}"
    sed "s#image: nftpol:dev#image: ${IMAGE}#" "${f}" >"${out}/${rank}-${rel//\//-}"
  done < <(find "${REPO_ROOT}/deploy" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
  grep -lq "image: ${IMAGE}" "${out}"/*.yaml ||
    die "no manifest under deploy/ names the image nftpol:dev"
}

# Only called once our own `kind create` succeeded (the trap is armed
# then), so it can only ever delete a cluster this script created.
on_exit() {
  local rc=$?
  if [[ -n "${CREATED_CLUSTER:-}" ]]; then
    if [[ ${rc} -ne 0 ]]; then
      log "failed (exit ${rc}); exporting kind logs to ${PASS_DIR}/logs"
      run kind export logs --name "${CREATED_CLUSTER}" "${PASS_DIR}/logs" || true
    fi
    if [[ "${KEEP_CLUSTER}" == "1" ]]; then
      log "keeping cluster ${CREATED_CLUSTER}: kubectl --kubeconfig ${PASS_KUBECONFIG} ..."
    else
      run kind delete cluster --name "${CREATED_CLUSTER}" --kubeconfig "${PASS_KUBECONFIG}" || true
    fi
  fi
  exit "${rc}"
}

create_cluster() {
  local cluster="$1" config="$2"
  local existing
  existing="$(kind get clusters 2>/dev/null || true)"
  if grep -qx -- "${cluster}" <<<"${existing}"; then
    die "a kind cluster named '${cluster}' already exists; this script never deletes a" \
      "cluster it did not create. Delete it yourself or set CLUSTER_NAME."
  fi
  if [[ "${PASS}" != "ipv4" ]] &&
    [[ "$(cat /proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null || echo 0)" != "1" ]]; then
    # kind's IPv6 and dual-stack nodes reach each other through the host.
    log "warning: net.ipv6.conf.all.forwarding is not 1 on this host; IPv6 pod traffic may fail"
  fi
  log "creating kind cluster ${cluster} (${NODE_IMAGE}, ${PASS}, kube-proxy ${KUBEPROXY_MODE})"
  # Without --retain kind removes the nodes of a create that failed; the
  # name was free, so they can only be nodes it just made.
  run kind create cluster --name "${cluster}" --image "${NODE_IMAGE}" \
    --config "${config}" --kubeconfig "${PASS_KUBECONFIG}" --wait 2m
  CREATED_CLUSTER="${cluster}"
  trap on_exit EXIT
}

# kindnet stays the CNI (routes, CNI config, masquerading), but its
# embedded NetworkPolicy controller must not run: nftpol alone enforces.
disable_kindnet_policy() {
  local cluster="$1" nodes node
  log "replacing kindnetd with ${KINDNETD_IMAGE} (no NetworkPolicy controller)"
  run kubectl --kubeconfig "${PASS_KUBECONFIG}" -n kube-system \
    set image daemonset/kindnet "kindnet-cni=${KINDNETD_IMAGE}"
  run kubectl --kubeconfig "${PASS_KUBECONFIG}" -n kube-system \
    rollout status daemonset/kindnet --timeout=3m
  if [[ "${DRY_RUN}" == "1" ]]; then
    nodes="${cluster}-control-plane ${cluster}-worker ${cluster}-worker2"
  else
    nodes="$(kind get nodes --name "${cluster}")"
  fi
  # The old controller fails open and leaves its table behind; remove it
  # so no packet meets a stale NFQUEUE rule.
  for node in ${nodes}; do
    if [[ "${DRY_RUN}" == "1" ]] ||
      docker exec "${node}" nft list table inet "${KINDNET_POLICY_TABLE}" >/dev/null 2>&1; then
      run docker exec "${node}" nft delete table inet "${KINDNET_POLICY_TABLE}"
    fi
  done
}

build_image() {
  log "building ${IMAGE}"
  # The context is the repository; .dockerignore (read by BuildKit and the
  # classic builder alike) keeps target/, _artifacts/ and .git out of it.
  run docker build -f "${REPO_ROOT}/deploy/Dockerfile" -t "${IMAGE}" "${REPO_ROOT}"
}

deploy_nftpol() {
  local cluster="$1" manifests="${PASS_DIR}/manifests" f
  run kind load docker-image "${IMAGE}" --name "${cluster}"
  render_manifests "${manifests}"
  log "deploying deploy/ in order: $(cd "${manifests}" && printf '%s ' *.yaml)"
  for f in "${manifests}"/*.yaml; do
    run kubectl --kubeconfig "${PASS_KUBECONFIG}" apply -f "${f}"
    if [[ "$(basename "${f}")" == 0-* ]]; then
      run kubectl --kubeconfig "${PASS_KUBECONFIG}" wait --for=condition=established \
        --timeout=60s -f "${f}"
    fi
  done
  run kubectl --kubeconfig "${PASS_KUBECONFIG}" -n kube-system \
    rollout status daemonset/nftpol --timeout=3m
  run kubectl --kubeconfig "${PASS_KUBECONFIG}" -n kube-system wait --timeout=2m \
    --for=condition=ready pods -l k8s-app=kube-dns
  run kubectl --kubeconfig "${PASS_KUBECONFIG}" get nodes -o wide
  run kubectl --kubeconfig "${PASS_KUBECONFIG}" get pods -A -o wide
}

run_e2e() {
  log "running upstream netpol e2e (focus '${FOCUS}', skip '${SKIP:-(none)}')"
  local skip_args=()
  [[ -n "${SKIP}" ]] && skip_args=(--skip="${SKIP}")
  run "${GINKGO}" --nodes="${GINKGO_NODES}" --focus="${FOCUS}" ${skip_args[@]+"${skip_args[@]}"} \
    "${E2E_TEST}" -- \
    --kubeconfig="${PASS_KUBECONFIG}" \
    --provider=local \
    --dump-logs-on-failure=false \
    --report-dir="${PASS_DIR}" \
    --disable-log-dump=true
}

run_pass() {
  PASS="$1"
  local cluster
  cluster="$(pass_cluster "${PASS}")"
  PASS_DIR="${WORK_DIR}/${PASS}"
  PASS_KUBECONFIG="${PASS_DIR}/kubeconfig"
  mkdir -p "${PASS_DIR}"
  # Anything that reads KUBECONFIG sees only the private file.
  export KUBECONFIG="${PASS_KUBECONFIG}"
  local config="${PASS_DIR}/kind-config.yaml"
  render_kind_config "${PASS}" "${config}"
  log "pass ${PASS}: cluster ${cluster}, kubeconfig ${PASS_KUBECONFIG}"
  create_cluster "${cluster}" "${config}"
  disable_kindnet_policy "${cluster}"
  if [[ "${BUILT:-0}" != "1" ]]; then
    build_image
    BUILT=1
  fi
  deploy_nftpol "${cluster}"
  run_e2e
  log "pass ${PASS} passed"
  trap - EXIT
  if [[ "${KEEP_CLUSTER}" == "1" ]]; then
    log "keeping cluster ${cluster}: kubectl --kubeconfig ${PASS_KUBECONFIG} ..."
  else
    run kind delete cluster --name "${cluster}" --kubeconfig "${PASS_KUBECONFIG}"
  fi
  CREATED_CLUSTER=""
}

main() {
  check_settings
  check_tools
  mkdir -p "${WORK_DIR}"
  export KUBERNETES_CONFORMANCE_TEST=y
  # Ctrl-C and SIGTERM end through the EXIT trap (once it is armed).
  trap 'exit 130' INT
  trap 'exit 143' TERM
  [[ -d /sys/module/sctp ]] ||
    log "note: the sctp kernel module is not loaded; the SCTP tests load it on first use" \
      "(SKIP=SCTPConnectivity on hosts that lack it)"
  resolve_test_binaries
  log "resolved: kind ${KIND_VERSION}; Kubernetes ${K8S_VERSION}; node image ${NODE_IMAGE}"
  log "resolved: kindnetd ${KINDNETD_IMAGE}; e2e.test ${E2E_TEST} (${E2E_SOURCE}); ginkgo ${GINKGO}"
  log "resolved: passes ${PASSES[*]}; kube-proxy ${KUBEPROXY_MODE}; image ${IMAGE}; work dir ${WORK_DIR}"
  printf '# kind %s, kubernetes %s, node image %s, kindnetd %s, e2e.test %s (%s), passes: %s, kube-proxy %s\n' \
    "${KIND_VERSION}" "${K8S_VERSION}" "${NODE_IMAGE}" "${KINDNETD_IMAGE}" "${E2E_TEST}" \
    "${E2E_SOURCE}" "${PASSES[*]}" "${KUBEPROXY_MODE}"
  local pass
  for pass in "${PASSES[@]}"; do
    run_pass "${pass}"
  done
  log "netpol e2e passed (${PASSES[*]})"
}

main "$@"
