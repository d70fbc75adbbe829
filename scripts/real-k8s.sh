#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the integration tests (tests/realk8s/).
#
#   scripts/real-k8s.sh build       build (or reuse) kube-apiserver + kube-controller-manager
#                                   and kubelet-podresources
#   scripts/real-k8s.sh build-podresources   build (or reuse) kubelet-podresources only: the
#                                   kubelet's own PodResources gRPC server on a unix socket,
#                                   answering from a JSON state file (tests/support/
#                                   kubelet_podresources/main.go); rebuilt when main.go changes
#   scripts/real-k8s.sh up DIR      start etcd + kube-apiserver (+ controller-manager) in DIR,
#                                   write DIR/admin.kubeconfig and print its path
#   scripts/real-k8s.sh down DIR    stop what `up DIR` started
#   scripts/real-k8s.sh restart-apiserver DIR   stop and start the API server only (tests)
#   scripts/real-k8s.sh bin-dir     print where the binaries are (built or not)
#
# The binaries are built from the Go module proxy at a pinned release: k8s.io/kubernetes is not
# meant to be a dependency (its go.mod points every k8s.io/* staging module at ./staging), so a
# small wrapper module requires it and replaces each staging module with its published v0.X.Y.
# Binaries, GOMODCACHE and GOCACHE are cached under ~/.cache/steward-k8s (override with
# STEWARD_K8S_CACHE), so only the first run on a machine pays for the build.
#
# Environment: KUBE_VERSION (default v1.36.3), STEWARD_K8S_CACHE, GO (default: go on PATH, then
# /usr/local/go/bin/go), ETCD (default: etcd on PATH, Debian's etcd-server),
# STEWARD_K8S_CONTROLLER_MANAGER=0 to start without kube-controller-manager.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
CACHE="${STEWARD_K8S_CACHE:-$HOME/.cache/steward-k8s}"
BIN_DIR="$CACHE/$KUBE_VERSION/bin"
PODRESOURCES_SRC="$(cd "$(dirname "$0")/.." && pwd)/tests/support/kubelet_podresources/main.go"
COMPONENTS=(kube-apiserver)
[ "${STEWARD_K8S_CONTROLLER_MANAGER:-1}" = 0 ] || COMPONENTS+=(kube-controller-manager)

die() { echo "real-k8s: $*" >&2; exit 1; }
log() { echo "real-k8s: $*" >&2; }

find_go() {
  if [ -n "${GO:-}" ]; then echo "$GO"; return; fi
  if command -v go >/dev/null 2>&1; then command -v go; return; fi
  [ -x /usr/local/go/bin/go ] && { echo /usr/local/go/bin/go; return; }
  die "no Go toolchain: install Go (1.26) or set GO=/path/to/go"
}

go_env() {  # the build environment every Go build here shares (one module and build cache)
  export GOMODCACHE="$CACHE/gomod" GOCACHE="$CACHE/gocache" GOFLAGS="-mod=mod -buildvcs=false"
  export CGO_ENABLED=0 GOTOOLCHAIN=local
}

write_gomod() {  # GO DIR MODULE: DIR/go.mod requiring k8s.io/kubernetes with its staging replaced
  local go="$1" work="$2" module="$3" kmod
  kmod="$(cd "$work" && "$go" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
          | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [ -f "$kmod" ] || die "could not download k8s.io/kubernetes@$KUBE_VERSION from the module proxy"
  local minor="${KUBE_VERSION#v1.}"; local staging_version="v0.${minor}"
  local go_directive; go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kmod")"
  {
    echo "module $module"
    echo
    echo "go ${go_directive:-1.26.0}"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    # Every staging module the release replaces locally, at its published version instead.
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*$#\1#p' "$kmod" \
      | while read -r m; do echo "	$m => $m $staging_version"; done
    echo ")"
  } > "$work/go.mod"
}

build() {
  build_control_plane
  build_podresources
}

build_control_plane() {
  local missing=()
  for c in "${COMPONENTS[@]}"; do [ -x "$BIN_DIR/$c" ] || missing+=("$c"); done
  ((${#missing[@]})) || return 0
  local go; go="$(find_go)"
  local minor="${KUBE_VERSION#v1.}"
  local work="$CACHE/$KUBE_VERSION/wrapper"
  mkdir -p "$work" "$BIN_DIR"
  go_env
  log "building ${missing[*]} $KUBE_VERSION with $("$go" version | cut -d' ' -f3) (cold: minutes)"
  local started=$SECONDS
  write_gomod "$go" "$work" steward.local/realk8s
  for c in "${missing[@]}"; do
    (cd "$work" && "$go" build -trimpath -ldflags "-s -w \
        -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
        -X k8s.io/component-base/version.gitMajor=1 \
        -X k8s.io/component-base/version.gitMinor=${minor%%.*} \
        -X k8s.io/component-base/version.gitTreeState=clean \
        -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION \
        -X k8s.io/client-go/pkg/version.gitMajor=1 \
        -X k8s.io/client-go/pkg/version.gitMinor=${minor%%.*}" \
        -o "$BIN_DIR/$c.tmp" "k8s.io/kubernetes/cmd/$c") || die "go build $c failed"
    mv "$BIN_DIR/$c.tmp" "$BIN_DIR/$c"
  done
  log "built in $((SECONDS - started)) s: $BIN_DIR"
}

podresources_stamp() {  # what the binary was built from: main.go's content and the toolchain
  echo "$(sha256sum < "$PODRESOURCES_SRC" | cut -d' ' -f1) $KUBE_VERSION $("$1" version | cut -d' ' -f3)"
}

build_podresources() {
  local out="$BIN_DIR/kubelet-podresources"
  [ -f "$PODRESOURCES_SRC" ] || die "missing $PODRESOURCES_SRC"
  local go; go="$(find_go)"
  local stamp; stamp="$(podresources_stamp "$go")"
  [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ] && return 0
  # A module of its own next to the wrapper (the same go.mod recipe, GOMODCACHE and GOCACHE):
  # importing kubelet packages adds requirements the control plane's wrapper need not carry.
  # Worktrees share this cache, so one build at a time.
  local work="$CACHE/$KUBE_VERSION/kubelet-podresources"
  mkdir -p "$work" "$BIN_DIR"
  exec 9>"$CACHE/$KUBE_VERSION/kubelet-podresources.lock"
  flock 9
  if [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
    exec 9>&-; return 0
  fi
  go_env
  log "building kubelet-podresources $KUBE_VERSION with $("$go" version | cut -d' ' -f3) (cold: minutes)"
  local started=$SECONDS
  write_gomod "$go" "$work" steward.local/kubeletpodresources
  [ -f "$work/go.sum" ] || [ ! -f "$CACHE/$KUBE_VERSION/wrapper/go.sum" ] \
    || cp "$CACHE/$KUBE_VERSION/wrapper/go.sum" "$work/go.sum"
  cp "$PODRESOURCES_SRC" "$work/main.go"
  (cd "$work" && "$go" build -trimpath -ldflags "-s -w" -o "$out.tmp" .) \
    || die "go build kubelet-podresources failed"
  mv "$out.tmp" "$out"
  echo "$stamp" > "$out.stamp"
  exec 9>&-
  log "built kubelet-podresources in $((SECONDS - started)) s: $out"
}

find_etcd() {
  if [ -n "${ETCD:-}" ]; then echo "$ETCD"; return; fi
  command -v etcd >/dev/null 2>&1 && { command -v etcd; return; }
  die "no etcd: apt-get install etcd-server (scripts/install-test-deps.sh does)"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() {  # URL TOKEN SECONDS WHAT
  local url="$1" token="$2" limit="$3" what="$4" i
  for ((i = 0; i < limit * 5; i++)); do
    if curl -sfk --max-time 2 ${token:+-H "Authorization: Bearer $token"} "$url" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

start_apiserver() {  # DIR
  local dir="$1"
  # shellcheck disable=SC1091
  source "$dir/env"
  setsid "$BIN_DIR/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port="$API_PORT" --cert-dir="$dir/pki" \
    --authorization-mode=Node,RBAC \
    --token-auth-file="$dir/tokens.csv" \
    --service-account-issuer="https://kubernetes.default.svc" \
    --service-account-key-file="$dir/pki/sa.pub" \
    --service-account-signing-key-file="$dir/pki/sa.key" \
    --api-audiences="https://kubernetes.default.svc" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/audit.log" \
    --audit-log-maxsize=0 --audit-log-mode=blocking \
    --enable-priority-and-fairness=true \
    --watch-cache=true \
    --allow-privileged=true \
    --profiling=false \
    >"$dir/kube-apiserver.log" 2>&1 < /dev/null &
  echo $! > "$dir/kube-apiserver.pid"
  wait_ready "https://127.0.0.1:$API_PORT/readyz" "$ADMIN_TOKEN" 120 kube-apiserver \
    || { tail -30 "$dir/kube-apiserver.log" >&2; die "kube-apiserver not ready after 120 s"; }
}

stop_pidfile() {  # FILE
  local f="$1" pid i
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

up() {
  local dir="$1"
  command -v openssl >/dev/null || die "openssl is missing"
  command -v curl >/dev/null || die "curl is missing"
  local etcd; etcd="$(find_etcd)"
  build
  mkdir -p "$dir/pki" "$dir/etcd"
  dir="$(cd "$dir" && pwd)"
  [ -f "$dir/kube-apiserver.pid" ] && die "$dir is already up (run: $0 down $dir)"

  local ETCD_PORT ETCD_PEER API_PORT ADMIN_TOKEN
  ETCD_PORT="$(free_port)"; ETCD_PEER="$(free_port)"; API_PORT="$(free_port)"
  ADMIN_TOKEN="$(openssl rand -hex 24)"
  cat > "$dir/env" <<EOF
ETCD_PORT=$ETCD_PORT
API_PORT=$API_PORT
ADMIN_TOKEN=$ADMIN_TOKEN
EOF
  openssl genrsa -out "$dir/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/pki/sa.key" -pubout -out "$dir/pki/sa.pub" 2>/dev/null
  # Static tokens: the admin (system:masters) and the controller-manager (its own user,
  # bound by the bootstrap RBAC policy to system:kube-controller-manager).
  local KCM_TOKEN; KCM_TOKEN="$(openssl rand -hex 24)"
  cat > "$dir/tokens.csv" <<EOF
$ADMIN_TOKEN,admin,admin-uid,"system:masters"
$KCM_TOKEN,system:kube-controller-manager,kcm-uid
EOF
  chmod 600 "$dir/tokens.csv" "$dir/pki/sa.key"
  # Metadata level: user, verb, resource, namespace, name and response code of every request,
  # the evidence the RBAC tests read. Bodies are not logged (they would hold tokens).
  cat > "$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
EOF

  setsid "$etcd" --name steward-test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "steward-test=http://127.0.0.1:$ETCD_PEER" \
    --unsafe-no-fsync \
    >"$dir/etcd.log" 2>&1 < /dev/null &
  echo $! > "$dir/etcd.pid"
  wait_ready "http://127.0.0.1:$ETCD_PORT/health" "" 30 etcd \
    || { tail -20 "$dir/etcd.log" >&2; die "etcd not healthy after 30 s"; }

  start_apiserver "$dir"

  local server="https://127.0.0.1:$API_PORT"
  cat > "$dir/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: steward-test
    cluster:
      server: $server
      certificate-authority: $dir/pki/apiserver.crt
contexts:
  - name: steward-test
    context: {cluster: steward-test, user: admin}
current-context: steward-test
users:
  - name: admin
    user: {token: $ADMIN_TOKEN}
EOF
  chmod 600 "$dir/admin.kubeconfig"
  sed -e "s/$ADMIN_TOKEN/$KCM_TOKEN/" -e "s/user: admin/user: kcm/" -e "s/- name: admin/- name: kcm/" \
    "$dir/admin.kubeconfig" > "$dir/controller-manager.kubeconfig"
  chmod 600 "$dir/controller-manager.kubeconfig"

  if [ "${STEWARD_K8S_CONTROLLER_MANAGER:-1}" != 0 ]; then
    # Real Job, ReplicaSet, Deployment, garbage-collector and namespace behaviour; no
    # scheduler and no kubelet, so pods stay Pending unless a test binds them.
    setsid "$BIN_DIR/kube-controller-manager" \
      --kubeconfig="$dir/controller-manager.kubeconfig" \
      --authentication-skip-lookup=true \
      --bind-address=127.0.0.1 --secure-port=0 \
      --leader-elect=false \
      --use-service-account-credentials=true \
      --service-account-private-key-file="$dir/pki/sa.key" \
      --root-ca-file="$dir/pki/apiserver.crt" \
      --controllers='*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ttl,-bootstrapsigner,-tokencleaner' \
      >"$dir/kube-controller-manager.log" 2>&1 < /dev/null &
    echo $! > "$dir/kube-controller-manager.pid"
  fi
  echo "$dir/admin.kubeconfig"
}

down() {
  local dir="$1"
  [ -d "$dir" ] || return 0
  stop_pidfile "$dir/kube-controller-manager.pid"
  stop_pidfile "$dir/kube-apiserver.pid"
  stop_pidfile "$dir/etcd.pid"
}

restart_apiserver() {
  local dir; dir="$(cd "$1" && pwd)"
  stop_pidfile "$dir/kube-apiserver.pid"
  start_apiserver "$dir"
}

case "${1:-}" in
  build) build; echo "$BIN_DIR" ;;
  build-podresources) build_podresources; echo "$BIN_DIR/kubelet-podresources" ;;
  bin-dir) echo "$BIN_DIR" ;;
  up) [ $# -eq 2 ] || die "usage: $0 up DIR"; up "$2" ;;
  down) [ $# -eq 2 ] || die "usage: $0 down DIR"; down "$2" ;;
  restart-apiserver) [ $# -eq 2 ] || die "usage: $0 restart-apiserver DIR"; restart_apiserver "$2" ;;
  *) echo "usage: $0 build | build-podresources | bin-dir | up DIR | down DIR | restart-apiserver DIR" >&2; exit 2 ;;
esac
