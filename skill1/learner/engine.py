"""DeepSpeed set-up for the learner ranks: the process group, the engine config, the engine, and the
ZeRO-3-sharded KL reference. Only the learner package imports DeepSpeed, and only here and in learner.py's
engine calls; `deepspeed_config` is pure (tested without DeepSpeed)."""

from __future__ import annotations

import os
import socket
from contextlib import closing

import torch

from skill1.config import LearnerConfig
from skill1.weights.wire import gloo_on_loopback, is_loopback, keep_collectives_on_loopback


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_learner_group(rank: int, world: int, store_host: str, store_port: int, timeout_s: float = 900) -> None:
    """Data-parallel learner ranks meet through a TCPStore the driver hosts (so no rank has to be created
    first to publish an address); DeepSpeed then finds torch.distributed initialised and uses the group."""
    import datetime

    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(store_host, store_port, is_master=False, timeout=timeout)
    for key, value in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", 0), ("MASTER_ADDR", store_host),
                       ("MASTER_PORT", store_port)):
        os.environ[key] = str(value)  # Ray gives each rank its own GPU: it is always local device 0
    if is_loopback(store_host):  # one machine: gloo/NCCL listen on loopback too, not the hostname's address
        keep_collectives_on_loopback()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", store=store, rank=rank,
                            world_size=world, timeout=timeout)


def deepspeed_config(cfg: LearnerConfig, bf16: bool, on_gpu: bool) -> dict:
    """The learner's DeepSpeed config (pure: tested without DeepSpeed)."""
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,  # boundaries are set by hand: micro-batch counts vary
        "zero_optimization": {"stage": cfg.zero_stage, **(_gpu_zero(cfg) if on_gpu else {})},
        "bf16": {"enabled": bf16},
        "gradient_clipping": cfg.max_grad_norm,
        # torch_adam avoids compiling DeepSpeed's CPU Adam extension on first use
        "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                                                   "torch_adam": True}},
        "steps_per_print": 2**31 - 1,
    }
    if bf16 and cfg.fp32_grad_accum and cfg.zero_stage >= 1:  # ZeRO-0 takes no mix of bf16 weights, fp32 grads
        ds_config["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds_config


def _gpu_zero(cfg: LearnerConfig) -> dict:
    """Overlapped, contiguous gradient communication with bounded buffers: DeepSpeed's default buckets (5e8
    elements) cost ~9 GB a GPU under ZeRO-2 with overlap_comm; skill1/plan.py counts what these take."""
    n = int(cfg.zero_bucket_elements)
    zero = {"overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": n}
    if cfg.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size=n, stage3_max_live_parameters=n)
    else:
        zero["allgather_bucket_size"] = n
    return zero


def reference_engine(model: torch.nn.Module, bf16: bool):
    """The frozen KL reference partitioned like a ZeRO-3 policy (no optimizer): 1/N of its weights per rank.
    Its forward gathers parameters layer by layer, a collective every rank must run alike."""
    import deepspeed

    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "bf16": {"enabled": bf16},
              "steps_per_print": 2**31 - 1}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine.module


def deepspeed_engine(model: torch.nn.Module, cfg: LearnerConfig, bf16: bool):
    """A DeepSpeed engine over the learner ranks (one unless `join_learner_group` ran first); on CPU it
    needs the CPU accelerator and gloo, set before import. On GPU: ZeRO-2/3 with bf16, overlapped comms."""
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch.distributed as dist

    restore_gloo = lambda: None  # noqa: E731
    if not dist.is_initialized():  # one rank on its own: its own fresh rendezvous, whatever the env inherited
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0",
                          WORLD_SIZE="1")
        # no peer to meet: an in-memory store, where DeepSpeed's env:// init would open a TCPStore on every
        # interface (MASTER_* stay set: DeepSpeed checks for them and names its shared memory after them);
        # gloo on loopback until the engine is built (a weight channel opened later picks its own interface)
        restore_gloo = gloo_on_loopback()
        dist.init_process_group("nccl" if on_gpu else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters()],
                                      config=deepspeed_config(cfg, bf16, on_gpu))
    restore_gloo()
    return engine
