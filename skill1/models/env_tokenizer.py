"""A small byte-level BPE tokenizer trained on an environment's own text, in Qwen2.5's format.

A CPU policy pays for every embedding row and every token of every prompt; Qwen2.5's 151,665-token
vocabulary is mostly unused by an environment whose prompts are a few hundred distinct words. This module
trains a byte-level BPE of about a thousand tokens on the text we give it (the environment's prompts and
demonstrations) with the same shape as Qwen2's tokenizer: NFC, Qwen2's split pattern, byte-level with all
256 byte symbols in the alphabet (so any text encodes, seen or not), and Qwen2.5's 22 added tokens, which
here take ids 0-21 in Qwen's order. It is wrapped as a transformers `PreTrainedTokenizerFast` with eos
`<|im_end|>`, pad `<|endoftext|>`, Qwen's special flags and a ChatML chat template, and saves/loads with
`save_pretrained` / `AutoTokenizer.from_pretrained` like any Hugging Face tokenizer.

The chat template renders exactly as Qwen2.5's, except when the conversation has no system message: then
it renders the `system_prompt` given at training time, or no system block at all when that is None.

Training is deterministic: the same corpus gives the same vocabulary and merges, in any process and
whatever the order of its strings (the trainer works on word counts and breaks ties by pair).
Text is NFC-normalised on encoding, so decode(encode(s)) == s for NFC strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from skill1.models.tokenizer import (EOS_TOKEN, MODEL_MAX_LENGTH, PAD_TOKEN, QWEN2_PATTERN, QWEN25_ADDED_TOKENS,
                                    build_chat_template)

NUM_BYTE_SYMBOLS = 256  # the byte-level alphabet: every byte is a token of its own
MIN_VOCAB_SIZE = len(QWEN25_ADDED_TOKENS) + NUM_BYTE_SYMBOLS  # 278: added tokens and bytes, no merges

# The added tokens never reach the BPE trainer as text: `Tokenizer.train` does not split them out (it
# would learn merges such as "<|im" and "_start|>"), so each corpus string is cut at them first, which
# is also what encoding does.
_ADDED_TOKEN_RE = re.compile("|".join(re.escape(tok) for tok, _ in QWEN25_ADDED_TOKENS))


def _pieces(corpus: Iterable[str]) -> Iterator[str]:
    """The corpus strings cut at the added tokens, which are left out (they are whole tokens already)."""
    for text in corpus:
        if not isinstance(text, str):
            raise TypeError(f"corpus items must be str, got {type(text).__name__}")
        for piece in _ADDED_TOKEN_RE.split(text):
            if piece:
                yield piece


def _backend(corpus: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train the `tokenizers` byte-level BPE; the added tokens get ids 0-21 with Qwen2.5's flags."""
    tok = Tokenizer(models.BPE())  # no unk token: the byte alphabet covers everything
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        continuing_subword_prefix="",  # as Qwen2Tokenizer's BPE: the tokenizer.json of a saved model dir
        end_of_word_suffix="",  # is then the same whichever class AutoTokenizer rebuilds it with
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[AddedToken(t, special=True, normalized=False) for t, _ in QWEN25_ADDED_TOKENS],
    )
    tok.train_from_iterator(_pieces(corpus), trainer=trainer)
    # The trainer adds every one of its tokens as special; Qwen2.5's tool-call / FIM / repo tokens are
    # added but not special (kept by decode(skip_special_tokens=True)). Re-adding them as non-special
    # updates their flags in place, ids unchanged.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, special in QWEN25_ADDED_TOKENS
                    if not special])
    decoder = tok.get_added_tokens_decoder()
    for i, (token, special) in enumerate(QWEN25_ADDED_TOKENS):
        added = decoder.get(i)
        if added is None or added.content != token or added.special != special:
            raise AssertionError(f"added token {token!r} (special={special}) did not get id {i}: {added!r}")
    return tok


def train_env_tokenizer(corpus: Iterable[str], vocab_size: int = 1024,
                        system_prompt: str | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most `vocab_size` tokens (added tokens and bytes included) on `corpus`.

    `corpus` is any iterable of strings (prompts, rendered chats, demonstrations); Qwen2.5's added tokens
    inside them are treated as whole tokens. `system_prompt` is what the chat template renders when a
    conversation has no system message (None: no system block). Takes about a second per MB of text.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (22 added tokens + 256 bytes), got {vocab_size}")
    backend = _backend(corpus, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=build_chat_template(system_prompt),
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    # as in build_qwen_tokenizer: the special added tokens other than eos/pad are extra special tokens
    tokenizer.add_special_tokens({
        "extra_special_tokens": [tok for tok, special in QWEN25_ADDED_TOKENS
                                 if special and tok not in (EOS_TOKEN, PAD_TOKEN)],
    })
    for i, (token, _) in enumerate(QWEN25_ADDED_TOKENS):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != i:
            raise AssertionError(f"added token {token!r} got id {got}, expected {i}")
    return tokenizer


def vocab_size_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The embedding rows a model needs for `tokenizer`: every id it can produce, added tokens included."""
    return len(tokenizer)
