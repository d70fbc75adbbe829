#!/usr/bin/env bash
# What `make demo` needs, installed without asking: Prometheus and Alertmanager (Debian
# packages, as `make test` installs them) and Steward with its demo extras in .venv.
# Idempotent. Each step says what it installs and why; what cannot be installed is said
# plainly, with the command that adds it, and the demo then says what it cannot show.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "make demo: $*" >&2; }

# binary:package. Found on PATH, or where the Debian package puts it.
NEEDS=(prometheus:prometheus prometheus-alertmanager:prometheus-alertmanager)
missing=()
for need in "${NEEDS[@]}"; do
  binary="${need%%:*}" package="${need#*:}"
  if command -v "$binary" >/dev/null 2>&1; then
    say "$binary: $(command -v "$binary")"
  else
    missing+=("$package")
  fi
done

# Debian's python3 makes venvs only with python3-venv (ensurepip) installed.
if [ ! -x .venv/bin/python ] && ! "${PYTHON:-python3}" -c "import ensurepip" 2>/dev/null; then
  missing+=(python3-venv)
fi

if ((${#missing[@]})); then
  command_line="apt-get install -y --no-install-recommends ${missing[*]}"
  say "installing ${missing[*]} (Debian packages): Prometheus evaluates Steward's alert" \
      "rules and holds the idle-GPU evidence; Alertmanager sends the alerts to Steward's" \
      "notifier, which writes the Slack messages; python3-venv (if listed) makes .venv"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; else SUDO="none"; fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here: install Prometheus (>= 2.42) and Alertmanager (>= 0.25) with your" \
        "package manager and put prometheus and prometheus-alertmanager (or alertmanager)" \
        "on PATH. The demo runs without them, and says what it cannot show."
  elif [ "$SUDO" = "none" ]; then
    say "cannot install without root or passwordless sudo. Add them with:"
    say "  sudo $command_line"
    say "The demo runs without them, and says what it cannot show."
  else
    # Only refresh the package lists when apt does not know the packages yet (a fresh
    # machine); otherwise install straight from them.
    unknown=""
    for package in "${missing[@]}"; do
      apt-cache policy "$package" 2>/dev/null | grep -q "Candidate: [0-9]" || unknown=1
    done
    if [ -n "$unknown" ]; then
      say "apt-get update (the package lists are empty)"
      $SUDO apt-get update -q
    fi
    say "${SUDO:+$SUDO }$command_line"
    # --no-install-recommends: prometheus alone would otherwise pull ~37 packages.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
      "${missing[@]}"
  fi
fi

scripts/install.sh --extras demo
