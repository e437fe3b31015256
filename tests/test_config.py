"""Config: YAML + dotted overrides, one clear line naming the key for anything wrong."""

from pathlib import Path

import pytest

from skill1.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_yaml_loads_and_overrides_apply():
    cfg = load_config(ROOT / "pipelines/configs/quickstart.yaml", ["learner.lr=3e-5", "--algorithm.group_size=8"])
    assert cfg.learner.lr == pytest.approx(3e-5)
    assert cfg.algorithm.group_size == 8
    assert cfg.run_dir == Path("runs/quickstart")


@pytest.mark.parametrize("override,needle", [
    ("learner.lrr=1", "learner.lrr"),
    ("nosuch.key=1", "nosuch"),
    ("algorithm.group_size=many", "algorithm.group_size"),
    ("learner.lr=-1", "learner.lr: must be > 0"),
    ("algorithm.preset=magic", "algorithm.preset: must be one of"),
    ("library.top_m=1", "library.top_m"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    ("env.name=nethack", "env.name"),
    ("rollout.backend=sglang", "rollout.backend"),
    ("learner.lr", "key=value"),
])
def test_bad_keys_and_values_are_one_line_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_missing_config_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("does/not/exist.yaml")


@pytest.mark.parametrize("preset,use_library,distill,sel,dis", [
    ("skill1", True, True, True, True),
    ("no_selection_credit", True, True, False, True),
    ("no_distillation_credit", True, True, True, False),
    ("no_library", False, True, False, True),
    ("grpo", False, False, False, False),
])
def test_presets_switch_parts_off(preset, use_library, distill, sel, dis):
    a = load_config(None, [f"algorithm.preset={preset}"]).algorithm.effective()
    assert (a.use_library, a.enable_distillation, a.selection_credit, a.distillation_credit) == \
        (use_library, distill, sel, dis)
    if not use_library:
        assert not a.enable_query_generation and not a.enable_rerank


def test_existing_run_dir_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "metrics.jsonl").write_text("{}")
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=taken"])
    with pytest.raises(ConfigError, match="already holds a run.*overwrite=true"):
        cfg.check_run_dir_free()
    load_config(None, [f"output_dir={tmp_path}", "name=taken", "overwrite=true"]).check_run_dir_free()
    load_config(None, [f"output_dir={tmp_path}", "name=fresh"]).check_run_dir_free()
