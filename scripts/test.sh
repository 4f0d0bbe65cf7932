#!/usr/bin/env bash
# The test command (README, "Tests"): installs what the tests need where it is absent, then runs
# every unit and integration test (the cluster tests start their own redis-server). Works on a
# fresh Debian machine with only Rust installed.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ((${#missing[@]})); then
  echo "installing test tools: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi

cargo test --locked --workspace "$@"
bash middleware/test.sh
