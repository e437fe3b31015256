"""The locally built Qwen2.5 tokenizer and the tiny Qwen2-architecture policy (offline, CPU)."""

from __future__ import annotations

import json
import socket
import unicodedata
from pathlib import Path

import pytest
import tiktoken
import torch
from safetensors.torch import load_file
from tiktoken.load import load_tiktoken_bpe
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from skill1.models import (
    DEFAULT_SYSTEM_PROMPT,
    QWEN2_PATTERN,
    QWEN25_ADDED_TOKENS,
    SPECIAL_TOKEN_IDS,
    TinyModelSpec,
    build_qwen_tokenizer,
    count_parameters,
    init_tiny_model,
    load_policy,
    qwen_tiktoken_path,
    save_tokenizer,
)

# Small spec for the round-trip tests: vocabulary-sized embeddings dominate either way.
SMALL = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=1, num_kv_heads=1, intermediate_size=128)

TEXTS = [
    "Hello, world!",
    "hello world",
    " leading space",
    "trailing space ",
    "multiple   spaces   between\twords",
    "line one\nline two\n\n\nline five\r\nwindows",
    "    indented with four spaces",
    "\t\ttabs\tand\ttabs",
    "   \n  \n",
    "",
    " ",
    "1234567890",
    "3.14159 and 2,718,281 and -42 and 1e-9",
    "The year 2024 had 366 days.",
    "I'll, we're, they've, she'd, it's, I'm, DON'T, You'LL",
    "CamelCaseIdentifier snake_case_identifier kebab-case-identifier",
    "def f(x: int) -> int:\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "https://example.com/path?query=1&other=two#frag",
    "e-mail: someone@example.org, phone +1 (555) 010-0199",
    "café naïve résumé façade über straße",
    "Ελληνικά και Русский текст",
    "中文分词测试：你好，世界！",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 문장입니다.",
    "العربية من اليمين إلى اليسار",
    "emoji 🙂👍🏽🇫🇷 family 👨‍👩‍👧",
    "math: ∑ᵢ xᵢ² ≤ ∞ ∀ε>0 ∃δ",
    "!!!???...,,,;;;:::",
    "----====____****####",
    "<think>reason here</think><action>go to fridge 1</action>",
    "Your task is to: put a clean mug in coffeemachine.",
    "a" * 300,
    "ab " * 50,
    "\u00a0non-breaking\u2003em-space\u200bzero-width",
    "MiXeD CaSe WoRdS",
    "1st 2nd 3rd 4th",
]


@pytest.fixture(autouse=True, scope="module")
def no_network():
    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to open a network connection: {args}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def tok():
    return build_qwen_tokenizer()


@pytest.fixture(scope="module")
def tt() -> tiktoken.Encoding:
    """The original: tiktoken over the same ranks, Qwen's pattern, Qwen2.5's added tokens."""
    ranks = load_tiktoken_bpe(str(qwen_tiktoken_path()))
    return tiktoken.Encoding("qwen2.5", pat_str=QWEN2_PATTERN, mergeable_ranks=ranks,
                             special_tokens=SPECIAL_TOKEN_IDS)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return init_tiny_model(str(tmp_path_factory.mktemp("tiny") / "policy"), SMALL)


# ---------------------------------------------------------------- tokenizer


def test_hello_world(tok):
    assert tok("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    assert tok.encode("Hello, world!") == [9707, 11, 1879, 0]  # no bos, no eos added


def test_vocabulary_and_special_ids(tok):
    assert len(tok) == 151665
    assert len(QWEN25_ADDED_TOKENS) == 22
    assert [SPECIAL_TOKEN_IDS[t] for t, _ in QWEN25_ADDED_TOKENS] == list(range(151643, 151665))
    for token, expected in SPECIAL_TOKEN_IDS.items():
        assert tok.convert_tokens_to_ids(token) == expected
        assert tok.encode(token) == [expected]  # never split
        assert tok.decode([expected]) == token
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 151645
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 151643
    assert tok.bos_token is None and tok.bos_token_id is None
    assert tok.model_max_length == 32768
    assert "<|im_start|>" in tok.all_special_tokens


def test_special_tokens_inside_text(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n<tool_call>{}</tool_call><|file_sep|>x")
    assert ids == [151644, 872, 198, 6023, 151645, 198, 151657, 6257, 151658, 151664, 87]
    # special ones are skipped on request, the tool/FIM ones (special=False in Qwen2.5) are kept
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi\n<tool_call>{}</tool_call><|file_sep|>x"


@pytest.mark.parametrize("text", TEXTS)
def test_agrees_with_tiktoken(tok, tt, text):
    assert unicodedata.normalize("NFC", text) == text  # HF normalises to NFC, tiktoken does not
    ids = tok.encode(text)
    assert ids == tt.encode_ordinary(text)
    assert tok.decode(ids) == text


def test_agrees_with_tiktoken_across_special_tokens(tok, tt):
    text = "<|im_start|>system\nYou are here.<|im_end|>\n<|im_start|>user\n3 apples<|im_end|>\n"
    assert tok.encode(text) == tt.encode(text, allowed_special="all")


def test_chat_template(tok):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\nHi!<|im_end|>\n"
                    "<|im_start|>assistant\nHello.<|im_end|>\n"
                    "<|im_start|>user\nBye?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    no_gen = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert no_gen == text[: -len("<|im_start|>assistant\n")]


def test_chat_template_default_system(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
                    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert text.endswith("<|im_start|>assistant\n")
    enc = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True,
                                  add_generation_prompt=True)
    ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
    assert ids == tok.encode(text)
    assert ids[:3] == [151644, 8948, 198] and ids[-3:] == [151644, 77091, 198]


def test_save_and_load_round_trip(tok, tmp_path):
    out = save_tokenizer(tok, tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(out)
    assert loaded.chat_template == tok.chat_template
    assert len(loaded) == len(tok)
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token_id) == (151645, 151643, None)
    assert loaded.model_max_length == 32768
    for text in TEXTS + list(SPECIAL_TOKEN_IDS):
        assert loaded.encode(text) == tok.encode(text)
    assert json.loads(loaded.backend_tokenizer.to_str()) == json.loads(tok.backend_tokenizer.to_str())


# ---------------------------------------------------------------- tiny model


def test_default_spec_head_dim():
    spec = TinyModelSpec()
    assert spec.hidden_size // spec.num_heads == 64


def test_init_writes_complete_model_dir(tiny_dir):
    names = {p.name for p in Path(tiny_dir).iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors",
            "tokenizer.json", "tokenizer_config.json"} <= names
    cfg = json.loads((Path(tiny_dir) / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["vocab_size"] == 151936 and cfg["tie_word_embeddings"] is True
    assert (cfg["eos_token_id"], cfg["pad_token_id"]) == (151645, 151643)
    gen = json.loads((Path(tiny_dir) / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643] and gen["pad_token_id"] == 151643


def test_load_policy_round_trip(tiny_dir):
    model, tokenizer = load_policy(tiny_dir)
    assert isinstance(model, Qwen2ForCausalLM) and isinstance(model.config, Qwen2Config)
    assert model.config.hidden_size == SMALL.hidden_size
    assert model.config.num_hidden_layers == SMALL.num_layers
    assert model.dtype == torch.float32 and not model.training
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer.padding_side == "left"
    assert tokenizer("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    assert tokenizer.chat_template == build_qwen_tokenizer().chat_template

    saved = load_file(str(Path(tiny_dir) / "model.safetensors"))
    state = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    assert count_parameters(model) == sum(t.numel() for t in saved.values())

    enc = tokenizer(["hi", "a longer prompt here"], return_tensors="pt", padding=True)
    assert enc["attention_mask"][0, 0] == 0  # left padding
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and enc["input_ids"].shape[1] < out.shape[1] <= enc["input_ids"].shape[1] + 5
    with torch.no_grad():
        again = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, again)


def test_load_policy_dtype(tiny_dir):
    model, _ = load_policy(tiny_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_init_is_deterministic(tmp_path, tiny_dir):
    again = init_tiny_model(str(tmp_path / "again"), SMALL)
    a = load_file(str(Path(tiny_dir) / "model.safetensors"))
    b = load_file(str(Path(again) / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = init_tiny_model(str(tmp_path / "other"), TinyModelSpec(**{**SMALL.__dict__, "seed": 1}))
    c = load_file(str(Path(other) / "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_init_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    init_tiny_model(str(tmp_path / "m"), SMALL)
    assert torch.equal(torch.rand(3), expected)


def test_default_tiny_parameter_count(tmp_path):
    model, _ = load_policy(init_tiny_model(str(tmp_path / "default")))
    spec = TinyModelSpec()
    h, i, n = spec.hidden_size, spec.intermediate_size, spec.num_layers
    kv = spec.num_kv_heads * (h // spec.num_heads)
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    assert count_parameters(model) == 151936 * h + n * per_layer + h
    assert model.model.layers[0].self_attn.head_dim == 64


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="skill1 model init-tiny"):
        load_policy(str(tmp_path / "nowhere"))
