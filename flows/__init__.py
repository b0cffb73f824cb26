"""Prefect orchestration for fastif: flows and tasks only; the maths lives in fastif_engine."""
