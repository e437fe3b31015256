"""The environment tokenizer: a small byte-level BPE in Qwen2.5's format, trained on env text (offline, CPU)."""

from __future__ import annotations

import json
import random
import re

import pytest
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerFast, Qwen2Config

from skill1.models.env_tokenizer import MIN_VOCAB_SIZE, build_chat_template, train_env_tokenizer, vocab_size_of
from skill1.models.tokenizer import (
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    MODEL_MAX_LENGTH,
    QWEN25_ADDED_TOKENS,
    SPECIAL_TOKEN_IDS,
    build_qwen_tokenizer,
)

VOCAB = 400  # small enough to be the binding limit on the corpus below

RECEPTACLES = ["cabinet", "countertop", "drawer", "fridge", "microwave", "sinkbasin", "shelf", "desk"]
OBJECTS = ["mug", "apple", "knife", "plate", "cup", "pencil", "book", "tomato"]
ACT_PROMPT = ("You are an expert agent operating in a text environment.\n"
              "Your task is to: {task}\n"
              "Your current observation is: {obs}\n"
              "Your admissible actions of the current situation are: [{actions}].\n"
              "Reason step by step within <think> </think> tags, then choose an admissible action and present "
              "it within <action> </action> tags.")

UNSEEN = [
    "Ünïcödé naïve café, Straße, 日本語のテキスト, Ελληνικά, русский",
    "digits 0123456789 and 3.14159, -42, 1e10, 2024-06-01",
    "line one\nline two\n\n\nline five\r\nwindows\ttab\t\tdouble tab",
    "emoji 🙂👍🏽🇫🇷 and symbols ∑∫√ ≠ ≤ → ©®™",
    "   leading and trailing spaces   ",
    "<thinking>not a tag we trained</thinking><act>zzz</act> `code` {json: [1, 2]}",
    "\x00\x01 control bytes \x7f and a lone ~",
    "",
]


def make_corpus(seed: int = 0, n: int = 300) -> list[str]:
    """ALFWorld-like prompts and demonstrations, plain and rendered as ChatML conversations."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        obj, dst = rng.choice(OBJECTS), rng.choice(RECEPTACLES)
        seen = [f"{r} {rng.randint(1, 4)}" for r in rng.sample(RECEPTACLES, 4)]
        action = rng.choice([f"go to {seen[0]}", f"open {seen[1]}", f"take {obj} 1 from {seen[2]}",
                             f"move {obj} 1 to {seen[3]}", "look", "inventory"])
        task = f"put a clean {obj} in {dst}."
        obs = ("You are in the middle of a room. Looking quickly around you, you see "
               + ", ".join(f"a {s}" for s in seen) + f".\n\nYour task is to: {task}")
        prompt = ACT_PROMPT.format(task=task, obs=obs, actions=", ".join(f"'go to {s}'" for s in seen))
        completion = f"<think>I need the {obj}, so {action}.</think><action>{action}</action>"
        texts += [action, completion, f"Your task is to: {task}",
                  f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{completion}<|im_end|>\n"]
    return texts


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="module")
def tok(corpus) -> PreTrainedTokenizerFast:
    return train_env_tokenizer(corpus, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def qwen() -> PreTrainedTokenizerFast:
    return build_qwen_tokenizer()


def backend_json(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def ids_of(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


# ---------------------------------------------------------------- 1. round trip


def test_round_trip_corpus(tok, corpus):
    for text in corpus[:200]:
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", UNSEEN)
def test_round_trip_unseen_text_falls_back_to_bytes(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < len(tok) for i in ids)
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_string(tok.convert_ids_to_tokens(ids)) == text
    assert tok.encode(text, add_special_tokens=True) == ids  # no bos / eos added


def test_every_byte_is_a_token(tok):
    data = bytes(range(256)).decode("latin-1")  # all 256 code points below 256, as 384 utf-8 bytes
    assert tok.decode(tok.encode(data)) == data
    vocab = tok.get_vocab()
    from tokenizers.pre_tokenizers import ByteLevel
    assert all(symbol in vocab for symbol in ByteLevel.alphabet())


# ---------------------------------------------------------------- 2. added / special tokens


def test_added_token_ids_in_qwen_order(tok, qwen):
    assert [tok.convert_tokens_to_ids(t) for t, _ in QWEN25_ADDED_TOKENS] == list(range(22))
    assert (tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_start|>"),
            tok.convert_tokens_to_ids("<|im_end|>")) == (0, 1, 2)
    for i, (token, special) in enumerate(QWEN25_ADDED_TOKENS):
        assert tok.encode(token) == [i]
        assert tok.decode([i]) == token
        qwen_flag = qwen.added_tokens_decoder[SPECIAL_TOKEN_IDS[token]].special
        assert tok.added_tokens_decoder[i].special == special == qwen_flag
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0
    assert tok.bos_token is None and tok.bos_token_id is None and tok.unk_token is None
    assert tok.model_max_length == MODEL_MAX_LENGTH
    assert sorted(tok.all_special_tokens) == sorted(qwen.all_special_tokens)
    assert vocab_size_of(tok) == len(tok) == max(tok.get_vocab().values()) + 1


def test_added_tokens_never_split_in_text(tok, qwen):
    text = "<|im_start|>user\ngo to cabinet 1<|im_end|>\n<tool_call>{}</tool_call><|file_sep|>x<|endoftext|>"
    ids = tok.encode(text)
    pieces = tok.convert_ids_to_tokens(ids)
    for token in ("<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<|file_sep|>", "<|endoftext|>"):
        assert token in pieces
    assert ids[0] == 1 and ids[-1] == 0
    assert tok.decode(ids) == text
    # special ones are skipped on request, the tool/FIM ones kept: exactly as Qwen2.5's tokenizer does
    kept = "user\ngo to cabinet 1\n<tool_call>{}</tool_call><|file_sep|>x"
    assert tok.decode(ids, skip_special_tokens=True) == kept
    assert qwen.decode(qwen.encode(text), skip_special_tokens=True) == kept


def test_added_tokens_in_the_corpus_teach_no_merges(tok):
    # the corpus holds rendered chats: "<|im_start|>" etc. must not leak fragments into the BPE vocab
    added = {t for t, _ in QWEN25_ADDED_TOKENS}
    fragments = [t for t in tok.get_vocab() if t not in added and re.search(r"<\||\|>|im_st|im_en", t)]
    assert fragments == []


# ---------------------------------------------------------------- 3. chat template

CONVERSATION = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Your task is to: put a clean mug in cabinet."},
                {"role": "assistant", "content": "<think>ok</think><action>go to cabinet 1</action>"},
                {"role": "user", "content": "You arrive at cabinet 1. The cabinet 1 is closed."}]


def test_chat_template_without_system_prompt(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    enc = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True, add_generation_prompt=True)
    assert isinstance(enc, BatchEncoding)
    assert ids_of(enc) == tok.encode(text)
    assert ids_of(enc)[0] == 1 and tok.decode(ids_of(enc)) == text


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_qwen_with_explicit_system(tok, qwen, add_generation_prompt):
    for messages in (CONVERSATION, CONVERSATION[:2]):
        ours = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        theirs = qwen.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert ours == theirs
        assert tok.decode(tok.encode(ours)) == ours


def test_chat_template_with_default_system_prompt(corpus, qwen):
    tok = train_env_tokenizer(corpus, vocab_size=VOCAB, system_prompt="You are a household agent.")
    user = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a household agent.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    # an explicit system message wins over the default
    assert (tok.apply_chat_template(CONVERSATION, tokenize=False)
            == qwen.apply_chat_template(CONVERSATION, tokenize=False))
    # with Qwen's own default it is Qwen's template, character for character, and renders the same
    assert build_chat_template(DEFAULT_SYSTEM_PROMPT) == CHAT_TEMPLATE == qwen.chat_template
    qwen_like = train_env_tokenizer(corpus, vocab_size=VOCAB, system_prompt=DEFAULT_SYSTEM_PROMPT)
    for messages in (user, CONVERSATION[1:]):
        assert (qwen_like.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                == qwen.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def test_chat_template_system_prompt_rendered_verbatim(corpus):
    odd = "It's a \\ \"quoted\" {{ not jinja }} {% raw %}\n\tüñí 🙂\r\nend"
    tok = train_env_tokenizer(corpus, vocab_size=VOCAB, system_prompt=odd)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == f"<|im_start|>system\n{odd}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"


# ---------------------------------------------------------------- 4. save / load


def _assert_same_tokenizer(loaded, tok, corpus):
    assert len(loaded) == len(tok)
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token_id) == (2, 0, None)
    assert loaded.unk_token is None
    assert loaded.model_max_length == MODEL_MAX_LENGTH
    assert loaded.chat_template == tok.chat_template
    assert loaded.get_vocab() == tok.get_vocab()
    assert sorted(loaded.all_special_tokens) == sorted(tok.all_special_tokens)
    assert backend_json(loaded) == backend_json(tok)
    for text in corpus[:40] + UNSEEN + [t for t, _ in QWEN25_ADDED_TOKENS]:
        ids = tok.encode(text)
        assert loaded.encode(text) == ids
        assert loaded.decode(ids) == tok.decode(ids)
        assert loaded.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)
    for messages in (CONVERSATION, CONVERSATION[1:2]):
        assert (ids_of(loaded.apply_chat_template(messages, add_generation_prompt=True))
                == ids_of(tok.apply_chat_template(messages, add_generation_prompt=True)))


def test_save_and_load_round_trip(tok, corpus, tmp_path):
    tok.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    _assert_same_tokenizer(loaded, tok, corpus)


def test_save_and_load_in_a_qwen2_model_dir(tok, corpus, tmp_path):
    # next to a qwen2 config.json, AutoTokenizer rebuilds it as a Qwen2Tokenizer: still the same tokenizer
    Qwen2Config(vocab_size=vocab_size_of(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=1, num_key_value_heads=1).save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    _assert_same_tokenizer(loaded, tok, corpus)


# ---------------------------------------------------------------- 5. determinism


def test_same_corpus_same_tokenizer(tok, corpus):
    again = train_env_tokenizer(corpus, vocab_size=VOCAB)
    assert again.get_vocab() == tok.get_vocab()
    assert backend_json(again) == backend_json(tok)
    shuffled = corpus[:]
    random.Random(1).shuffle(shuffled)
    assert backend_json(train_env_tokenizer(iter(shuffled), vocab_size=VOCAB)) == backend_json(tok)
    assert backend_json(train_env_tokenizer(make_corpus(seed=1), vocab_size=VOCAB)) != backend_json(tok)


# ---------------------------------------------------------------- 6. vocabulary


def test_vocab_size_and_frequent_words(tok):
    assert len(tok) == VOCAB  # the limit binds on this corpus
    pieces = lambda text: tok.convert_ids_to_tokens(tok.encode(text))  # noqa: E731
    for word in (" cabinet", " fridge", " countertop", " the", "Your", " task", "action", "think", "</"):
        assert len(pieces(word)) == 1, (word, pieces(word))
    # Qwen2's split pattern cuts tags at letter/punctuation boundaries before BPE sees them, so a tag is
    # never one token: "<think" + ">", "</" + "action" + ">" (Qwen2.5's own tokenizer does the same)
    assert pieces("<think>") == ["<think", ">"]
    assert pieces("</action>") == ["</", "action", ">"]


def test_vocab_size_is_an_upper_bound(corpus):
    big = train_env_tokenizer(corpus, vocab_size=100_000)  # runs out of merges long before
    assert MIN_VOCAB_SIZE < len(big) < 100_000
    assert len(train_env_tokenizer(["go to cabinet 1"], vocab_size=MIN_VOCAB_SIZE)) == MIN_VOCAB_SIZE
    with pytest.raises(ValueError, match="vocab_size"):
        train_env_tokenizer(["go to cabinet 1"], vocab_size=MIN_VOCAB_SIZE - 1)


def test_prompts_are_shorter_than_with_qwen(corpus, qwen):
    tok = train_env_tokenizer(corpus)  # default vocab_size
    prompts = [t for t in corpus if t.startswith("<|im_start|>user")][:20]
    ours = sum(len(tok.encode(p)) for p in prompts)
    theirs = sum(len(qwen.encode(p)) for p in prompts)
    assert ours < theirs
