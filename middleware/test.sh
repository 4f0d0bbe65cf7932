#!/usr/bin/env bash
# Tests of the tenant-context middleware packages (Python and Node), end-to-end tests included.
# Installs what they need where absent (a venv in middleware/python/.venv from PyPI; `npm ci` in
# middleware/node from npm), builds the gateway binary the end-to-end tests run, then runs pytest
# and `node --test`. Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

# MIDDLEWARE_SKIP_BUILD=1: use the binary already in target/ (the end-to-end tests skip without one).
if [[ "${MIDDLEWARE_SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$root" && cargo build --locked --quiet)
fi

echo "== testvectors: generate.py --check"
venv="$here/python/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv" || { echo "python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
if ! "$venv/bin/python" -c "import pytest, starlette, uvicorn, httpx, cryptography" 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pytest starlette uvicorn httpx cryptography
fi
"$venv/bin/python" "$here/testvectors/generate.py" --check

echo "== middleware/python: pytest"
(cd "$here/python" && "$venv/bin/python" -m pytest -q -rs)

echo "== middleware/node: node --test"
cd "$here/node"
if [[ ! -d node_modules/express ]]; then
  npm ci --no-audit --no-fund --silent
fi
node --test test/*.test.js
