"""Config: YAML + dotted overrides, one clear line naming the key for anything wrong."""

from pathlib import Path

import pytest

from skill1.config import ConfigError, load_config

from helpers import CPU_OVERRIDES

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


# --- the benchmark configs: the paper's settings (SKILL1.md "Reference settings") on 8 and on 2 GPUs ----------------

BENCHMARKS = {  # file -> (env, model dir, GPUs it is laid out for)
    "alfworld_qwen2.5_7b.yaml": ("alfworld", "Qwen2.5-7B-Instruct", 8),
    "webshop_qwen2.5_7b.yaml": ("webshop", "Qwen2.5-7B-Instruct", 8),
    "alfworld_qwen2.5_1.5b.yaml": ("alfworld", "Qwen2.5-1.5B-Instruct", 2),
    "webshop_qwen2.5_1.5b.yaml": ("webshop", "Qwen2.5-1.5B-Instruct", 2),
}
ENV_CONVENTIONS = {  # env -> (max steps, invalid-action penalty, eval split, eval tasks)
    "alfworld": (50, 0.1, "eval_out_of_distribution", 134),
    "webshop": (15, 0.5, "eval", 500),
}
# what may differ between the 7B and the 1.5B config of one benchmark: the model and where things run
LAYOUT_KEYS = {"name", "model.path", "rollout.num_samplers", "learner.num_ranks", "learner.zero_stage",
               "learner.micro_batch_tokens", "learner.gradient_checkpointing", "learner.shard_reference"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_every_config_in_pipelines_is_covered():
    assert {p.name for p in (ROOT / "pipelines/configs").glob("*.yaml")} == {"quickstart.yaml", "cpu_study.yaml",
                                                                              *BENCHMARKS}


def test_the_cpu_configs_share_the_policy_and_compare_on_fixed_held_out_tasks():
    quick = load_config(ROOT / "pipelines/configs/quickstart.yaml")
    study = load_config(ROOT / "pipelines/configs/cpu_study.yaml")
    assert quick.model == study.model and quick.env.max_steps == study.env.max_steps  # one warm start serves both
    assert study.eval_at_ends and study.eval_every and study.rollout.eval_temperature == 0  # greedy, fixed points
    assert quick.eval_at_ends and quick.rollout.eval_temperature == 0
    assert study.algorithm.iterations > quick.algorithm.iterations
    assert study.rollout.max_library_staleness == quick.rollout.max_library_staleness == 0
    assert study.rollout.constrain_actions and quick.rollout.constrain_actions  # rewards about the task, not spelling


@pytest.mark.parametrize("fname", sorted(BENCHMARKS))
def test_benchmark_config_has_the_paper_settings(fname):
    env, model, gpus = BENCHMARKS[fname]
    cfg = load_config(ROOT / "pipelines/configs" / fname)
    assert cfg.name == fname.removesuffix(".yaml")
    assert Path(cfg.model.path).name == model and cfg.model.dtype == "bfloat16" and not cfg.model.create_tiny_if_missing
    a, lib, r, lr = cfg.algorithm, cfg.library, cfg.rollout, cfg.learner
    assert (a.preset, a.tasks_per_iteration, a.group_size, a.iterations, cfg.save_every) == ("skill1", 16, 8, 150, 50)
    assert (a.lambda_rerank, a.lambda_distill, a.intrinsic_coefficient) == (0.3, 0.3, 1.0)
    assert (a.normalize_std, a.selection_credit_type, a.intrinsic_group_norm) == (True, "chosen_minus_mean", False)
    assert (lib.top_k, lib.alpha, lib.u_hat_aggregation, lib.capacity) == (3, 0.05, "max", 5000)
    assert (lr.lr, lr.clip_eps, lr.kl_coef, lr.ppo_epochs) == (1e-6, 0.2, 0.01, 1)
    assert (r.temperature, r.top_p, r.eval_temperature) == (1.0, 1.0, 0.4)
    assert {r.max_new_tokens_query, r.max_new_tokens_rerank, r.max_new_tokens_act, r.max_new_tokens_distill} == {2048}
    assert (cfg.env.name, cfg.env.history_length) == (env, 2)
    assert (cfg.env.max_steps, cfg.env.invalid_action_penalty, cfg.env.eval_split, cfg.env.eval_tasks) == \
        ENV_CONVENTIONS[env]
    # the GPU layout: vLLM samplers and learner ranks on GPUs of their own, NCCL weight sync
    assert (r.backend, lr.backend, lr.weight_sync, cfg.placement.mode) == ("vllm", "deepspeed", "collective", "split")
    assert r.num_samplers * r.num_gpus_per_sampler + lr.num_ranks * lr.num_gpus == gpus
    assert r.num_gpus_per_sampler == 1 and lr.num_gpus == 1
    assert cfg.logging.wandb_mode == "online"


@pytest.mark.parametrize("fname", sorted(BENCHMARKS))
def test_benchmark_config_validates_on_a_cpu_machine_with_the_e2e_overrides(fname):
    cfg = load_config(ROOT / "pipelines/configs" / fname, CPU_OVERRIDES)
    assert (cfg.rollout.backend, cfg.learner.num_gpus, cfg.rollout.num_gpus_per_sampler) == ("hf", 0, 0)
    assert (cfg.learner.weight_sync, cfg.placement.mode) == ("object_store", "none")
    assert (cfg.algorithm.group_size, cfg.learner.lr) == (8, 1e-6)  # the algorithm is untouched


@pytest.mark.parametrize("env", ["alfworld", "webshop"])
def test_the_2_gpu_config_differs_from_the_8_gpu_one_only_in_model_and_layout(env):
    big, small = (_flat(load_config(ROOT / f"pipelines/configs/{env}_qwen2.5_{size}.yaml").to_dict())
                  for size in ("7b", "1.5b"))
    assert big.keys() == small.keys()
    differ = {k for k in big if big[k] != small[k]}
    assert differ <= LAYOUT_KEYS, differ - LAYOUT_KEYS
    assert (small["rollout.num_samplers"], small["learner.num_ranks"], small["learner.zero_stage"]) == (1, 1, 2)


def test_no_file_names_a_config_that_does_not_exist():
    """Every `pipelines/configs/<x>.yaml` mentioned in the repo's text files exists (renames leave no stale path)."""
    import re
    import subprocess

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    missing = []
    for rel in files:
        path = ROOT / rel
        if path.suffix not in {".md", ".py", ".sh", ".yaml", ".yml", ".ipynb", ".toml", ".txt"} or not path.is_file():
            continue
        for name in re.findall(r"pipelines/configs/([\w.\-]+\.yaml)", path.read_text(errors="replace")):
            if not (ROOT / "pipelines/configs" / name).is_file():
                missing.append(f"{rel}: pipelines/configs/{name}")
    assert not missing, missing


def test_constrained_acting_is_refused_on_vllm_whose_logprobs_would_be_the_masked_policys():
    assert load_config(None, ["rollout.constrain_actions=true"]).rollout.constrain_actions
    with pytest.raises(ConfigError, match="rollout.constrain_actions"):
        load_config(None, ["rollout.backend=vllm", "rollout.constrain_actions=true"])
