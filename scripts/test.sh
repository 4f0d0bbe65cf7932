#!/usr/bin/env bash
# The test command (README, "Two commands"; CONTRIBUTING.md): installs what the tests need where it is absent, then runs
# every unit and integration test (the cluster tests start their own redis-server; the operator
# tests open the dashboard in headless Chromium), then checks deploy/ (deploy/test.sh: promtool,
# Kubernetes schemas). Works on a fresh Debian machine with only Rust installed.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]})); then
  echo "installing test tools: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi

# The signature tests verify Ed25519 with Python's `cryptography` (an independent implementation).
if ! python3 -c 'import cryptography' >/dev/null 2>&1; then
  echo "installing python3 cryptography"
  python3 -m pip install --quiet cryptography ||
    python3 -m pip install --quiet --break-system-packages cryptography ||
    (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq python3-cryptography)
fi

cargo test --locked --workspace "$@"
bash middleware/test.sh
bash deploy/test.sh
