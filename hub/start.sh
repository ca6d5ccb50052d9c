#!/usr/bin/env bash
# Start the course's JupyterHub (as root) with hub/jupyterhub_config.py, after hub/setup.sh.
# Stop it with Ctrl-C. Settings: the same environment variables as hub/setup.sh, plus
# HUB_IP and HUB_PORT (default 127.0.0.1:8000).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export HUB_PREFIX="${HUB_PREFIX:-/opt/attention-surgeon}"
export HUB_VENV="${HUB_VENV:-$HUB_PREFIX/venv}"
[ -x "$HUB_VENV/bin/jupyterhub" ] || { echo "hub/start.sh: run hub/setup.sh first (no $HUB_VENV)"; exit 2; }
cd "$HUB_PREFIX/state"
echo "hub/start.sh: the hub is at http://${HUB_IP:-127.0.0.1}:${HUB_PORT:-8000}/ (Ctrl-C stops it)"
exec "$HUB_VENV/bin/jupyterhub" -f "$REPO/hub/jupyterhub_config.py"
