#!/usr/bin/env bash
# Run the test suite; pytest's "no tests ran" (exit 5) is a failure too.
set -uo pipefail
cd "$(dirname "$0")/.."
export PREFECT_SERVER_EPHEMERAL_ENABLED=true PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=60
python3 -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "no tests ran: failing" >&2; exit 1; fi
exit "$rc"
