#!/usr/bin/env bash
# One-time set-up on a fresh machine: torch's CPU build first, then fastif with CPU faiss.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet "torch==2.13.0"
python3 -m pip install --quiet -e ".[cpu,dev]"
