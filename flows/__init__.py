"""Prefect orchestration for fastif: flows and tasks only; the maths lives in fastif_engine.

Importing this package pins the settings the embedded (no-server) mode needs, unless the
environment already sets them: the ephemeral server on, telemetry off (there may be no network).
"""
import os

for _name, _value in {
    "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    "DASK_LOGGING__DISTRIBUTED": "warning",
}.items():
    os.environ.setdefault(_name, _value)
