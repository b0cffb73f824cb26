"""The settings model is the one source of truth: CLI options and YAML keys must match its fields."""
import typing

import pytest
import yaml

from flows.cli import build_parser, config_from_args
from fastif_engine.config import CleanConfig, ConfigError, load_config

REQUIRED = {"train": "t.parquet", "valid": "v.parquet", "out": "o", "model": "tabular-logreg"}
NEEDS = {"dask_address": {"runner": "dask"}, "ray_address": {"runner": "ray"}}


def _clean_actions():
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    return [a for a in commands.choices["clean"]._actions if a.dest not in ("help", "config")]


def _sample(name: str, field):
    """A value for ``field`` that differs from its default, and how it is written on the command line."""
    kind = field.annotation
    if typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        value = [c for c in typing.get_args(kind) if c != field.default][-1]
        return value, [value]
    if kind is bool:
        return True, []
    if typing.get_origin(kind) is list:
        return ["a", "b"], ["a,b"]
    if kind is dict:
        return {"hidden": 8}, ["hidden=8"]
    value = {int: 7, float: 0.25, str: "s3://bucket/x.parquet"}[kind]
    return value, [str(value)]


def test_every_field_is_one_cli_option_and_every_option_a_field():
    actions = _clean_actions()
    dests = [a.dest for a in actions]
    assert sorted(dests) == sorted(CleanConfig.model_fields), "CLI options and settings fields differ"
    assert len(dests) == len(set(dests))
    for action in actions:  # no option carries its own default: unset options fall through to YAML, then the model
        assert action.default is None, action.dest


@pytest.mark.parametrize("name", [n for n in CleanConfig.model_fields if n not in REQUIRED])
def test_cli_option_yaml_key_and_model_agree(name, tmp_path):
    field = CleanConfig.model_fields[name]
    value, words = _sample(name, field)
    expected = CleanConfig(**REQUIRED, **NEEDS.get(name, {}), **{name: value})
    assert getattr(expected, name) != field.get_default(call_default_factory=True)

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(yaml.safe_dump({**REQUIRED, **NEEDS.get(name, {}), name: value}))
    assert load_config(str(yaml_file), {}) == expected

    action = next(a for a in _clean_actions() if a.dest == name)
    argv = ["clean"] + [w for k, v in {**REQUIRED, **NEEDS.get(name, {})}.items() for w in (f"--{k}", v)]
    argv += [action.option_strings[0], *words]
    assert config_from_args(build_parser().parse_args(argv)) == expected


def test_the_yaml_key_is_the_field_name_and_dashes_are_accepted(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(yaml.safe_dump({**REQUIRED, "flag-evidence": 3.0, "memory_budget": 0.125}))
    cfg = load_config(str(yaml_file), {})
    assert cfg.flag_evidence == 3.0 and cfg.memory_budget == 0.125
    yaml_file.write_text(yaml.safe_dump({**REQUIRED, "memory": 1}))
    with pytest.raises(ConfigError, match="'memory': unknown key"):
        load_config(str(yaml_file), {})


def test_the_deployment_parameters_are_valid_settings():
    from pathlib import Path

    spec = yaml.safe_load((Path(__file__).parent.parent / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        CleanConfig(**deployment["parameters"]["config"])


def test_the_cli_reference_page_is_generated_from_the_current_parser():
    from flows.reference import PAGE, markdown

    assert PAGE.read_text() == markdown(), "docs/reference/cli.md is stale: run `python -m flows.reference`"
    assert "`--flag-evidence`" in PAGE.read_text() and "## `fastif apply`" in PAGE.read_text()
