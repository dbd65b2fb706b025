#!/usr/bin/env bash
# Runs the upstream Kubernetes NetworkPolicy e2e suite against nftpol on a
# kind cluster, the way kube-network-policies does in its CI:
#
#   1. create a kind cluster (1 control plane + 2 workers, kindnet CNI),
#   2. build the nftpol image from deploy/Dockerfile and load it into kind,
#   3. deploy deploy/*.yaml (ServiceAccount, ClusterRole, binding, DaemonSet),
#   4. run e2e.test through ginkgo focused on the sig-network Netpol tests.
#
# Needs: docker (or podman via KIND_EXPERIMENTAL_PROVIDER), kind, kubectl,
# and the Kubernetes test binaries (ginkgo, e2e.test) matching K8S_VERSION;
# they are downloaded into $WORK_DIR/bin when missing and DOWNLOAD=1.
#
# Environment (all optional):
#   CLUSTER_NAME   kind cluster name                      (nftpol-e2e)
#   K8S_VERSION    kindest/node and test binaries version (v1.33.1)
#   IP_FAMILY      ipv4 | ipv6 | dual                     (ipv4)
#   KUBEPROXY_MODE iptables | ipvs | nftables             (iptables)
#   IMAGE          image tag to build and deploy          (nftpol:dev)
#   FOCUS          ginkgo focus regexp                    (Netpol)
#   SKIP           ginkgo skip regexp                     (SCTPConnectivity)
#   GINKGO_NODES   parallel ginkgo nodes                  (10)
#   WORK_DIR       artifacts, kubeconfig, downloaded bins (./_artifacts)
#   DOWNLOAD       1 to download missing test binaries    (1)
#   KEEP_CLUSTER   1 to keep the cluster after the run    (0)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
CLUSTER_NAME="${CLUSTER_NAME:-nftpol-e2e}"
K8S_VERSION="${K8S_VERSION:-v1.33.1}"
IP_FAMILY="${IP_FAMILY:-ipv4}"
KUBEPROXY_MODE="${KUBEPROXY_MODE:-iptables}"
IMAGE="${IMAGE:-nftpol:dev}"
FOCUS="${FOCUS:-Netpol}"
SKIP="${SKIP:-SCTPConnectivity}"
GINKGO_NODES="${GINKGO_NODES:-10}"
WORK_DIR="${WORK_DIR:-${REPO_ROOT}/_artifacts}"
DOWNLOAD="${DOWNLOAD:-1}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"

log() { printf '>>> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is required (see the header of $0)"
}

case "${IP_FAMILY}" in
  ipv4 | ipv6 | dual) ;;
  *) die "IP_FAMILY must be ipv4, ipv6 or dual, not '${IP_FAMILY}'" ;;
esac

mkdir -p "${WORK_DIR}/bin"
export PATH="${WORK_DIR}/bin:${PATH}"
KUBECONFIG_FILE="${WORK_DIR}/kubeconfig.conf"

fetch_test_binaries() {
  if command -v e2e.test >/dev/null 2>&1 && command -v ginkgo >/dev/null 2>&1; then
    return
  fi
  [[ "${DOWNLOAD}" == "1" ]] || die "e2e.test and ginkgo not found and DOWNLOAD=0"
  need curl
  need tar
  local arch
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "unsupported architecture $(uname -m)" ;;
  esac
  log "downloading Kubernetes ${K8S_VERSION} test binaries"
  local tarball="${WORK_DIR}/kubernetes-test.tar.gz"
  curl -fsSL "https://dl.k8s.io/${K8S_VERSION}/kubernetes-test-linux-${arch}.tar.gz" -o "${tarball}"
  tar -xzf "${tarball}" -C "${WORK_DIR}/bin" --strip-components=3 \
    kubernetes/test/bin/ginkgo kubernetes/test/bin/e2e.test
  rm -f "${tarball}"
}

cleanup() {
  local rc=$?
  if [[ ${rc} -ne 0 ]]; then
    log "failed (exit ${rc}); exporting kind logs to ${WORK_DIR}/logs"
    kind export logs --name "${CLUSTER_NAME}" "${WORK_DIR}/logs" >/dev/null 2>&1 || true
  fi
  if [[ "${KEEP_CLUSTER}" != "1" ]]; then
    kind delete cluster --name "${CLUSTER_NAME}" >/dev/null 2>&1 || true
  fi
  exit "${rc}"
}

create_cluster() {
  if [[ "${IP_FAMILY}" != "ipv4" ]] &&
    [[ "$(cat /proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null || echo 0)" != "1" ]]; then
    # kind's IPv6 and dual-stack clusters route through the host.
    log "warning: net.ipv6.conf.all.forwarding is not 1 on this host; IPv6 pod traffic may fail"
  fi
  log "creating kind cluster ${CLUSTER_NAME} (${K8S_VERSION}, ${IP_FAMILY}, kube-proxy ${KUBEPROXY_MODE})"
  # kindnet stays the CNI (disableDefaultCNI is false): it does routing
  # only, and nftpol enforces the policies on top of it.
  kind create cluster --name "${CLUSTER_NAME}" --image "kindest/node:${K8S_VERSION}" \
    --wait 2m --retain --config=- <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  ipFamily: ${IP_FAMILY}
  kubeProxyMode: ${KUBEPROXY_MODE}
nodes:
- role: control-plane
- role: worker
- role: worker
KIND
  kind get kubeconfig --name "${CLUSTER_NAME}" >"${KUBECONFIG_FILE}"
}

deploy_nftpol() {
  log "building ${IMAGE}"
  docker build -f "${REPO_ROOT}/deploy/Dockerfile" -t "${IMAGE}" "${REPO_ROOT}"
  kind load docker-image "${IMAGE}" --name "${CLUSTER_NAME}"
  log "deploying deploy/"
  local manifest
  for manifest in "${REPO_ROOT}"/deploy/*.yaml; do
    # The DaemonSet names nftpol:dev; point it at the image just built.
    sed "s#image: nftpol:dev#image: ${IMAGE}#" "${manifest}" |
      kubectl --kubeconfig "${KUBECONFIG_FILE}" apply -f -
  done
  kubectl --kubeconfig "${KUBECONFIG_FILE}" -n kube-system \
    rollout status daemonset/nftpol --timeout=3m
  kubectl --kubeconfig "${KUBECONFIG_FILE}" wait --timeout=2m \
    --for=condition=ready pods --namespace=kube-system -l k8s-app=kube-dns
  kubectl --kubeconfig "${KUBECONFIG_FILE}" get nodes -o wide
  kubectl --kubeconfig "${KUBECONFIG_FILE}" get pods -A -o wide
}

run_e2e() {
  log "running upstream netpol e2e (focus '${FOCUS}', skip '${SKIP}')"
  export KUBERNETES_CONFORMANCE_TEST=y
  ginkgo --nodes="${GINKGO_NODES}" \
    --focus="${FOCUS}" \
    --skip="${SKIP}" \
    "$(command -v e2e.test)" \
    -- \
    --kubeconfig="${KUBECONFIG_FILE}" \
    --provider=local \
    --dump-logs-on-failure=false \
    --report-dir="${WORK_DIR}" \
    --disable-log-dump=true
}

main() {
  need docker
  need kind
  need kubectl
  fetch_test_binaries
  trap cleanup EXIT
  create_cluster
  deploy_nftpol
  run_e2e
  log "netpol e2e passed"
}

main "$@"
