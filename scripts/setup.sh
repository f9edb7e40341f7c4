#!/usr/bin/env bash
# Set up napari-xai on a fresh Debian/Ubuntu machine: system packages for a
# virtual display + software OpenGL (Xvfb, Mesa), a virtual environment in .venv,
# and the package with its Qt, test and dask extras (the Dask cohort tests run in CI). Safe to run again: it only does
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 \
libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 \
libxcb-xinerama0 libdbus-1-3 libfontconfig1"
if command -v dpkg >/dev/null 2>&1; then
  missing=""
  for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing system packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.napari-xai-installed"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import napari_xai" 2>/dev/null; then
  echo "setup: installing napari-xai and its dependencies into .venv (torch is large; this takes a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[qt,test,dask]"
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv)"
