#!/usr/bin/env bash
# One-time (idempotent) set-up of a development checkout on Debian/Ubuntu: the system packages
# the build needs, a virtualenv in .venv, and an editable install of rkllm-cffi with its test
# and dev extras. It prints one line per step; the tools' own output is shown only when a step
# fails. Re-running it when nothing the build reads has changed takes a second: the install is
# skipped when .venv's stamp (a hash of the build inputs) matches and the package imports.
# Python-only changes never need a re-run (the install is editable).
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT
step() { printf 'setup: %s\n' "$*"; }
run() {  # run a command quietly; on failure show what it said
  if ! "$@" >>"$log" 2>&1; then
    cat "$log" >&2
    step "failed: $*" >&2
    exit 1
  fi
}

APT_PACKAGES=(gcc libc6-dev python3-dev python3-venv libffi-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})) && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  step "installing system packages: ${missing[*]}"
  run $SUDO apt-get update -qq
  run $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  step "creating the virtualenv .venv"
  run "$PY" -m venv .venv
fi

# Extras to install: dev (tests, linters) by default; .ci/run adds browser,fleet (the chat
# page's and the fleet's tests, which skip with a message without them).
EXTRAS=${RKLLM_EXTRAS:-dev}

# Everything the compiled part of the install is made from (Python files are linked, not copied).
stamp_file=.venv/.rkllm-cffi-build-stamp
stamp=$( { .venv/bin/python -VV; echo "$EXTRAS"; cat pyproject.toml setup.py build_ffi.py;
           find csrc include -type f | LC_ALL=C sort | xargs cat; } | sha256sum | cut -d' ' -f1)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] &&
   .venv/bin/python -c "import rkllm, rkllm._native" >/dev/null 2>&1; then
  step "up to date (.venv/bin/rkllm, .venv/bin/python -m pytest)"
  exit 0
fi

step "installing build tools into .venv (pip, setuptools, cffi)"
run .venv/bin/python -m pip install -q --upgrade pip "setuptools>=77" "cffi>=1.17"
step "building rkllm-cffi: the shim and one simulated runtime per ABI family (about a minute)"
# no build isolation: the tools are in .venv already, so no fresh build environment each time
run .venv/bin/python -m pip install -q --no-build-isolation -e ".[$EXTRAS]"
echo "$stamp" >"$stamp_file"
step "ready (.venv/bin/rkllm, .venv/bin/python -m pytest)"
