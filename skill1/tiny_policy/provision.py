"""Make sure `model.path` holds a policy: use it if present, else build the tiny local one there.

The tiny policy is built in three steps, each recorded in `skill1_provenance.json`:
  tokenizer   env_bpe: a byte-level BPE trained on the built-in env's demonstrations (Qwen's chat format
              and special tokens kept), or the real Qwen2.5 BPE
  init        a random Qwen2-architecture model of `model.hidden_size` x `model.num_layers`
  warm start  SFT on searcher demonstrations, with the episode settings of the run that asks for it
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from skill1.config import ModelConfig
from skill1.run_dir import MODEL_MARKER, DirLock, check_model_dir_replaceable

TOKENIZER_CORPUS_TASKS = 200


def env_corpus(settings, num_tasks: int = TOKENIZER_CORPUS_TASKS) -> list[str]:
    """The text of demonstrations (prompts and responses, chat markup included) the env tokenizer learns from."""
    from skill1.models.tokenizer import build_chat_template, build_qwen_tokenizer
    from skill1.tiny_policy.warm_start import demo_tasks, demonstrations

    qwen = build_qwen_tokenizer()  # any exact tokenizer renders the text; Qwen's is at hand
    qwen.chat_template = build_chat_template(None)  # as the env tokenizer renders chats: no system block
    demos = demonstrations(demo_tasks(num_tasks, seed=1), qwen, settings, seed=1)
    return [qwen.decode(d.prompt_ids + d.response_ids) for d in demos]


def build_tokenizer(cfg: ModelConfig, settings):
    from skill1.models.tokenizer import build_qwen_tokenizer

    if cfg.tokenizer == "qwen2.5":
        return build_qwen_tokenizer()
    from skill1.models.env_tokenizer import train_env_tokenizer

    return train_env_tokenizer(env_corpus(settings), vocab_size=cfg.vocab_size)


def ensure_policy(cfg: ModelConfig, settings, force: bool = False) -> str:
    """`settings`: the `EpisodeSettings` of the run that asks (`skill1.settings.episode_settings`): the
    demonstrations are played with them."""
    path = Path(cfg.path)
    if (path / "config.json").is_file() and not force:
        differs = recipe_changes(cfg, path)
        if differs:  # the model is used as built: say so, never silently
            print(f"model.path {path} was built with {', '.join(differs)}; it is used as built "
                  f"(`skill1 model init-tiny --force` rebuilds it from this config)", file=sys.stderr)
        return str(path)
    if not cfg.create_tiny_if_missing and not force:
        raise FileNotFoundError(
            f"model.path: no model at {path} (expected a Hugging Face model dir with config.json); "
            "run `skill1 model init-tiny --out <dir>` or point model.path at e.g. Qwen2.5-7B-Instruct")
    # never over something we did not build (a folder of models, `--out ..`), one builder at a time
    check_model_dir_replaceable(path)
    with DirLock(path, "tiny-model build"):
        if (path / "config.json").is_file() and not force:  # another build finished since the check above
            return str(path)
        _build(cfg, path, settings)
    return str(path)


RECIPE_KEYS = ("hidden_size", "num_layers", "head_dim", "warm_start_steps", "warm_start_lr", "warm_start_batch",
               "warm_start_tasks", "warm_start_dagger_steps", "warm_start_dagger_tasks", "tokenizer")


def recipe_changes(cfg: ModelConfig, path: Path) -> list[str]:
    """`key=built (config: asked)` for each model.* key where the built model (its provenance) and `cfg`
    differ; [] for a model we did not build (nothing recorded to compare)."""
    try:
        built = json.loads((path / MODEL_MARKER).read_text())
    except (OSError, ValueError):
        return []
    return [f"model.{k}={built[k]} (this config: {getattr(cfg, k)})" for k in RECIPE_KEYS
            if k in built and built[k] != getattr(cfg, k)]


def _build(cfg: ModelConfig, path: Path, settings) -> None:
    from skill1.models.tiny import TinyModelSpec, count_parameters, init_tiny_model, load_policy
    from skill1.tiny_policy.warm_start import warm_start

    # build beside the target and rename at the end: a crash never leaves a half-written model dir; the
    # debris of crashed builds (we hold the lock: no other build is running) goes first
    for debris in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(debris, ignore_errors=True)
    started = time.monotonic()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    heads = cfg.hidden_size // cfg.head_dim
    spec = TinyModelSpec(hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=heads,
                         num_kv_heads=max(1, heads // 2), intermediate_size=3 * cfg.hidden_size)
    tokenizer = build_tokenizer(cfg, settings)
    init_tiny_model(str(tmp), spec, tokenizer)
    report = {"tokenizer": cfg.tokenizer, "vocab": len(tokenizer), "hidden_size": cfg.hidden_size,
              "num_layers": cfg.num_layers, "head_dim": cfg.head_dim, "warm_start_steps": cfg.warm_start_steps,
              "warm_start_lr": cfg.warm_start_lr, "warm_start_batch": cfg.warm_start_batch,
              "warm_start_tasks": cfg.warm_start_tasks, "warm_start_dagger_steps": cfg.warm_start_dagger_steps,
              "warm_start_dagger_tasks": cfg.warm_start_dagger_tasks,
              "env_max_steps": settings.max_steps}
    model, tokenizer = load_policy(str(tmp))
    report["parameters"] = count_parameters(model)
    if cfg.warm_start_steps > 0:
        report.update(warm_start(model, tokenizer, settings, cfg.warm_start_steps, lr=cfg.warm_start_lr,
                                 batch_size=cfg.warm_start_batch, num_tasks=cfg.warm_start_tasks,
                                 dagger_steps=cfg.warm_start_dagger_steps, dagger_tasks=cfg.warm_start_dagger_tasks))
        model.save_pretrained(str(tmp))
    report["build_s"] = round(time.monotonic() - started, 1)  # tokenizer, demonstrations, init and warm start
    (tmp / MODEL_MARKER).write_text(json.dumps(report, indent=2))  # last: marks the dir as one we built
    if path.exists():
        check_model_dir_replaceable(path)  # still ours (or empty) now that the build is done
        shutil.rmtree(path)
    os.replace(tmp, path)
