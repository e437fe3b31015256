"""wandb sweeps (pipelines/sweeps/*.yaml): valid by wandb's own rules, and what an agent runs parses as our config.

Validation is wandb's: the `sweeps` package (the `wandb[sweeps]` extra) holds the sweep-config JSON schema that
`wandb sweep` checks a local-controller sweep against (`wandb.controller()._validate`), `SweepConfig` (the
controller's parse) and the search (`next_run`). The command an agent would start is built by wandb's own agent
(`wandb.wandb_agent.Agent._command_run`, with the process launch replaced by a recorder).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from skill1.cli import build_parser
from skill1.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "pipelines/sweeps").glob("*.yaml"))
NEEDS_SWEEPS = "wandb's sweep validation lives in the `sweeps` package: pip install 'wandb[sweeps]==0.31.0'"


def _load(path: Path) -> dict:
    from wandb.sdk.launch.sweeps.utils import load_sweep_config  # what `wandb sweep FILE` reads it with

    config = load_sweep_config(str(path))
    assert config, f"{path}: empty or not YAML"
    return config


def _violations(config: dict) -> list[str]:
    sweeps = pytest.importorskip("sweeps", reason=NEEDS_SWEEPS)
    return sweeps.schema_violations_from_proposed_config(config)


def _plain(value):
    return value.item() if hasattr(value, "item") else value  # numpy scalars from the local search engine


def _values(spec: dict) -> list:
    """Values an agent may be handed for one parameter: the ends and middle of its range, every listed value."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    lo, hi = spec["min"], spec["max"]
    mid = math.sqrt(lo * hi) if spec.get("distribution", "").startswith(("log_", "inv_log_")) else (lo + hi) / 2
    if spec.get("distribution") == "int_uniform":
        mid = int(mid)
    return [lo, mid, hi]


def _draws(config: dict, n: int = 8) -> list[dict]:
    """Parameter sets drawn by wandb's own search engine (bayes with no finished run draws at random)."""
    sweeps = pytest.importorskip("sweeps", reason=NEEDS_SWEEPS)
    return [{k: _plain(v["value"]) for k, v in sweeps.next_run(config, []).config.items()} for _ in range(n)]


def _agent_argv(config: dict, params: dict, monkeypatch, tmp_path) -> list[str]:
    """The command line wandb's agent would start for a run with `params` (its ${...} expansion, verbatim)."""
    import wandb.wandb_agent as agent_mod

    started: list[list[str]] = []

    class Recorder:
        def __init__(self, command=None, **_):
            started.append(command)

    monkeypatch.setattr(agent_mod, "AgentProcess", Recorder)
    monkeypatch.chdir(ROOT)  # agents run from the repo root: program and --config are relative to it
    for var, value in {"WANDB_DIR": str(tmp_path), "WANDB_SWEEP_ID": "testsweep", "WANDB_RUN_ID": "",
                       "WANDB_SWEEP_PARAM_PATH": ""}.items():
        monkeypatch.setenv(var, value)
    (tmp_path / "wandb" / "sweep-testsweep").mkdir(parents=True, exist_ok=True)
    agent = agent_mod.Agent(api=None, queue=None, sweep_id="testsweep")
    agent._sweep_command = list(config.get("command") or [])  # what the server hands the agent
    agent._command_run({"type": "run", "run_id": "run1", "program": config["program"],
                        "args": {k: {"value": v} for k, v in params.items()}})
    assert len(started) == 1
    return started[0]


def _get(cfg, key: str):
    value = cfg.to_dict()
    for part in key.split("."):
        value = value[part]
    return value


def _train_argv(command: list[str], program: str) -> list[str]:
    """Arguments after the program: what pipelines/train.py hands `skill1 train`."""
    assert program in command, command
    return command[command.index(program) + 1:]


def test_there_is_a_sweep():
    assert SWEEPS and any(p.name == "skill1_bayes.yaml" for p in SWEEPS)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_is_valid_by_wandbs_schema_and_search(path):
    sweeps = pytest.importorskip("sweeps", reason=NEEDS_SWEEPS)
    config = _load(path)
    assert _violations(config) == []
    filled = sweeps.SweepConfig(config)  # the controller's parse: fills defaults, raises on anything malformed
    assert set(filled["parameters"]) == set(config["parameters"])
    assert len(_draws(config, 2)) == 2  # the search engine accepts it (bayes also needs a metric: below)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_runs_our_program_with_our_keys_and_a_metric_we_log(path):
    from skill1.metrics import episode_metrics

    config = _load(path)
    assert (ROOT / config["program"]).is_file()
    command = config["command"]
    assert "${args_no_hyphens}" in command and "${args}" not in command, command
    assert (ROOT / command[command.index("--config") + 1]).is_file()
    if config["method"] == "bayes" or "metric" in config:
        assert config["metric"]["name"] in episode_metrics([]), config["metric"]
    defaults = load_config(None).to_dict()
    for key in config["parameters"]:
        section = defaults
        for part in key.split("."):
            assert isinstance(section, dict) and part in section, f"{key}: not a skill1 config key"
            section = section[part]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_value_an_agent_passes_parses_and_lands_in_the_config(path, monkeypatch, tmp_path):
    """For each parameter's range ends, middle and listed values: the agent's argv → argparse → load_config."""
    config = _load(path)
    program = config["program"]
    cases = [{key: value} for key, spec in config["parameters"].items() for value in _values(spec)]
    for params in cases:
        command = _agent_argv(config, params, monkeypatch, tmp_path)
        argv = _train_argv(command, program)
        args = build_parser().parse_args(["train", *argv])
        cfg = load_config(args.config, args.overrides)
        swept = [a for a in argv if a.split("=", 1)[0] in config["parameters"]]
        assert swept == [f"{k}={v}" for k, v in params.items()]  # ${args_no_hyphens}, expanded
        for loaded in (cfg, load_config(args.config, swept)):
            for key, value in params.items():
                got = _get(loaded, key)
                assert got == pytest.approx(value) and type(got) is type(value), (key, value, got)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_draws_of_wandbs_search_engine_parse(path, monkeypatch, tmp_path):
    config = _load(path)
    for params in _draws(config):
        argv = _train_argv(_agent_argv(config, params, monkeypatch, tmp_path), config["program"])
        args = build_parser().parse_args(["train", *argv])
        cfg = load_config(args.config, args.overrides)
        for key, value in params.items():
            assert _get(cfg, key) == pytest.approx(value), (key, value, _get(cfg, key))


def test_the_default_hyphenated_args_form_would_not_reach_our_config(monkeypatch, tmp_path):
    """Why the command uses ${args_no_hyphens}: wandb's default `--key=value` is refused by argparse."""
    config = {**_load(ROOT / "pipelines/sweeps/skill1_bayes.yaml")}
    config["command"] = [c if c != "${args_no_hyphens}" else "${args}" for c in config["command"]]
    argv = _train_argv(_agent_argv(config, {"learner.lr": 1e-5}, monkeypatch, tmp_path), config["program"])
    assert "--learner.lr=1e-05" in argv
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", *argv])


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c["parameters"]["learner.lr"].update(distribution="log_uniformish"), "learner.lr"),
    (lambda c: c["parameters"]["learner.lr"].update(distribution="log_uniform"), "log_uniform_values"),
    (lambda c: c["parameters"]["library.alpha"].update(min=0.5, max=0.1), "not less than max"),
    (lambda c: c.update(method="annealing"), "annealing"),
    (lambda c: c.update(metrics=c.pop("metric")), "metrics"),
    (lambda c: c["metric"].update(goal="maximise", name="rollout/success"), "maximise"),
])
def test_wandbs_validation_rejects_broken_sweeps(mutate, needle):
    import copy

    config = copy.deepcopy(_load(ROOT / "pipelines/sweeps/skill1_bayes.yaml"))
    mutate(config)
    violations = _violations(config)
    assert violations and any(needle in v for v in violations), violations


def test_bayes_without_a_metric_is_refused_by_wandbs_search():
    """The schema lets `metric` out; wandb's Bayesian search does not."""
    import copy

    config = copy.deepcopy(_load(ROOT / "pipelines/sweeps/skill1_bayes.yaml"))
    del config["metric"]
    with pytest.raises(ValueError, match="metric"):
        _draws(config, 1)
