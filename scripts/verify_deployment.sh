#!/usr/bin/env bash
# Verify prefect.yaml for real: a local `prefect server start`, the process work pool, the
# nightly deployment, one run picked up by a worker. Uses a throwaway PREFECT_HOME and a free
# port; leaves the run's outputs in runs/nightly. About 2 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export FASTIF_HOME="$PWD"
export PREFECT_HOME="$(mktemp -d)"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
LOG="$PREFECT_HOME/server.log"

prefect server start --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "$PREFECT_API_URL/health" >/dev/null && break; sleep 1; done
curl -sf "$PREFECT_API_URL/health" >/dev/null || { echo "server did not start"; cat "$LOG"; exit 1; }

python3 -m flows.cli datasets export digits --out data/nightly --noise 0.1
prefect work-pool create fastif-process --type process --overwrite >/dev/null
prefect --no-prompt deploy --all
prefect deployment inspect 'clean_dataset/nightly-clean' | grep -q "0 2 \* \* \*" \
  || { echo "the nightly cron schedule is missing"; exit 1; }
RUN=$(prefect deployment run 'clean_dataset/nightly-clean' | grep -oE '[0-9a-f]{8}-[0-9a-f-]{27}' | head -1)
echo "flow run $RUN scheduled; starting a worker"
prefect worker start --pool fastif-process --run-once
STATE=$(prefect flow-run inspect "$RUN" | grep -oE "state_type=StateType\.[A-Z]+" | head -1)
echo "flow run $RUN: $STATE"
[ "$STATE" = "state_type=StateType.COMPLETED" ] || exit 1
test -f runs/nightly/flags.parquet && test -f runs/nightly/report.html
echo "deployment verified: runs/nightly/report.html"
