"""Make sure `model.path` holds a policy: use it if present, else build the tiny local one there."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from skill1.config import ModelConfig, Skill1Config


def ensure_policy(cfg: ModelConfig, force: bool = False) -> str:
    path = Path(cfg.path)
    if (path / "config.json").is_file() and not force:
        return str(path)
    if not cfg.create_tiny_if_missing and not force:
        raise FileNotFoundError(
            f"model.path: no model at {path} (expected a Hugging Face model dir with config.json); "
            "run `skill1 model init-tiny --out <dir>` or point model.path at e.g. Qwen2.5-7B-Instruct")
    from skill1.agent.episode import EpisodeSettings
    from skill1.models.tiny import TinyModelSpec, init_tiny_model, load_policy
    from skill1.models.warm_start import warm_start

    # build beside the target and rename at the end: a crash never leaves a half-written model dir
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    init_tiny_model(str(tmp), TinyModelSpec())
    report = {"warm_start_steps": cfg.warm_start_steps}
    if cfg.warm_start_steps > 0:
        model, tokenizer = load_policy(str(tmp))
        settings = EpisodeSettings.from_config(Skill1Config(), training=True)
        report.update(warm_start(model, tokenizer, settings, cfg.warm_start_steps))
        model.save_pretrained(str(tmp))
    (tmp / "skill1_provenance.json").write_text(json.dumps(report, indent=2))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return str(path)
