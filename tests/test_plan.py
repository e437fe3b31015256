"""The per-GPU memory plan (skill1/plan.py, `skill1 plan`, train's pre-flight) against the shipped GPU configs.

Every expected number is written out here from the formulas in plan.py's docstring and the models' published
shapes (Qwen2.5-7B-Instruct: 7,615,616,512 parameters; Qwen2.5-1.5B-Instruct: 1,543,714,304), not read from
the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skill1.cli import main
from skill1.config import load_config
from skill1.plan import LayoutDoesNotFit, ModelShape, budget, check, layout_of_config

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
QWEN_7B = {"hidden_size": 3584, "num_hidden_layers": 28, "intermediate_size": 18944, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}
QWEN_1_5B = {"hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}
P7, P15 = 7_615_616_512, 1_543_714_304


def _model_dir(tmp_path: Path, cfg: dict, name: str) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], **cfg}))
    return str(d)


def test_parameter_counts_are_the_published_ones():
    assert ModelShape.from_config(QWEN_7B).params == P7
    assert ModelShape.from_config(QWEN_1_5B).params == P15


def _seven_b(tmp_path, *overrides):
    model = _model_dir(tmp_path, QWEN_7B, "q7")
    return load_config(str(ROOT / "pipelines/configs/alfworld_qwen2.5_7b.yaml"), [f"model.path={model}", *overrides])


def test_7b_config_fits_80gb_and_not_40gb(tmp_path):
    cfg = _seven_b(tmp_path)
    # 4 ranks, ZeRO-3, bf16 weights, fp32 gradients, Adam 12 B/param, sharded reference, checkpointing, 8192 tokens
    per_token = 28 * 2 * 3584 + 2 * (6 * 3584 + 2 * 512 + 4 * 18944) + 152064 * (2 + 12)
    expected = {"weights": 2 * P7 // 4, "gradients": 4 * P7 // 4, "optimizer": 12 * P7 // 4,
                "reference": 2 * P7 // 4, "activations": 8192 * per_token,
                "zero_buffers": 2 * 50_000_000 * 4 + 50_000_000 * 2,  # ZeRO-3: reduce bucket (fp32), prefetch (bf16)
                "weight_sync": 2 * 256 * 2**20, "runtime": 2 * GiB}
    bud = check(cfg, 80)
    assert bud.learner == expected
    assert sum(expected.values()) / GiB == pytest.approx(57.71, abs=0.01)  # of 74.5 GiB
    # the sampler: the weights, then a KV cache of 2 * layers * kv_dim * 2 bytes a token up to 0.5 of the GPU
    assert bud.sampler == {"weights": 2 * P7, "kv_cache": 40_000_000_000 - 2 * P7}
    assert bud.kv_tokens == (40_000_000_000 - 2 * P7) // (2 * 28 * 512 * 2)
    with pytest.raises(LayoutDoesNotFit, match=r"learner rank needs 57\.7 GiB of a 37\.3 GiB GPU \(largest: optimizer"):
        check(cfg, 40)


def test_the_7b_layout_before_the_plan_does_not_fit_80gb(tmp_path):
    """What the 7B config said before: a whole bf16 reference per rank, no checkpointing, 16384-token micro-batches."""
    cfg = _seven_b(tmp_path, "learner.shard_reference=false", "learner.gradient_checkpointing=false",
                   "learner.micro_batch_tokens=16384", "learner.fp32_grad_accum=false")
    per_token = 28 * 2 * (6 * 3584 + 2 * 512 + 4 * 18944) + 152064 * 14
    static = 2 * P7 // 4 + 2 * P7 // 4 + 12 * P7 // 4 + 2 * P7  # weights, bf16 grads, Adam, whole reference
    assert static / 1e9 == pytest.approx(45.7, abs=0.1)  # the issue's ~46 GB
    assert budget(ModelShape.from_config(QWEN_7B), layout_of_config(cfg, 80)).learner["activations"] == 16384 * per_token
    with pytest.raises(LayoutDoesNotFit, match="largest: activations .*learner.gradient_checkpointing"):
        check(cfg, 80)


def test_1_5b_config_fits_80gb_not_40gb(tmp_path):
    model = _model_dir(tmp_path, QWEN_1_5B, "q15")
    cfg = load_config(str(ROOT / "pipelines/configs/alfworld_qwen2.5_1.5b.yaml"), [f"model.path={model}"])
    # one rank, ZeRO-2: nothing sharded; no checkpointing; 8192 tokens
    per_token = 28 * 2 * (6 * 1536 + 2 * 256 + 4 * 8960) + 151936 * 14
    zero_buffers = 4.5 * 2 * 50_000_000 * 4  # ZeRO-2, overlap_comm: DeepSpeed's 4.5x of its two fp32 buckets
    total = 2 * P15 + 4 * P15 + 12 * P15 + 2 * P15 + 8192 * per_token + zero_buffers + 2 * 256 * 2**20 + 2 * GiB
    assert sum(check(cfg, 80).learner.values()) == total
    assert total / GiB == pytest.approx(68.63, abs=0.01)
    with pytest.raises(LayoutDoesNotFit):
        check(cfg, 40)


def test_plan_command_prints_the_budget_and_exits_2_when_it_cannot_fit(tmp_path, capsys):
    model = _model_dir(tmp_path, QWEN_7B, "q7")
    config = str(ROOT / "pipelines/configs/alfworld_qwen2.5_7b.yaml")
    assert main(["plan", "--config", config, f"model.path={model}"]) == 0  # placement.gpu_memory_gb: 80
    out = capsys.readouterr().out
    assert "7.62 B parameters" in out and "optimizer" in out and out.rstrip().endswith("fits")
    assert main(["plan", "--config", config, "--gpu-gb", "40", f"model.path={model}"]) == 2
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_train_refuses_a_layout_that_cannot_fit_before_any_actor_starts(tmp_path, capsys, monkeypatch):
    import skill1.loop.train

    model = _model_dir(tmp_path, QWEN_7B, "q7")
    monkeypatch.setattr(skill1.loop.train, "train", lambda *a, **k: pytest.fail("train must not start"))
    rc = main(["train", "--config", str(ROOT / "pipelines/configs/alfworld_qwen2.5_7b.yaml"),
               f"model.path={model}", "placement.gpu_memory_gb=40", f"output_dir={tmp_path}/runs"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: alfworld_qwen2.5_7b: learner rank needs") and len(err.splitlines()) == 1
