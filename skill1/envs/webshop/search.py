"""Product search: BM25 over the text the original indexes, without Java.

The original (search_engine/convert_product_file_format.py + pyserini) indexes, per product,
`Title + Description + BulletPoints[0] + "name: v1, v2, and name2: ..."` lower-cased, and searches it with
Lucene's BM25 (pyserini defaults k1=0.9, b=0.4), returning the top 50 hits. Here: `bm25s` with Lucene's
BM25 variant and the same k1/b over the same document text, ties broken by product order as Lucene breaks
them by doc id.

Analysis differs slightly from Lucene's English analyzer, which has no pure-Python twin without an extra
dependency: lower-case word tokens, possessive "'s" dropped, Lucene's English stop words removed, and
Lucene's *minimal* English stemmer (plural "s" rules) instead of Porter. Rankings are close, not identical.
"""

from __future__ import annotations

import functools
import re
import threading

import bm25s
import numpy as np

from skill1.envs.webshop.data import Product, WebshopData

SEARCH_RETURN_N = 50  # engine.py: hits per search
K1, B = 0.9, 0.4  # pyserini's BM25 defaults

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split())
_TOKEN = re.compile(r"\w+(?:[.'’]\w+)*")
_POSSESSIVE = re.compile(r"['’]s$")


def minimal_stem(word: str) -> str:
    """Lucene's EnglishMinimalStemmer: "ies" -> "y" (not after a/e), drop a plural "s" except after u/s and
    in "aes"/"ees"/"oes"/"ies" endings."""
    if len(word) < 3 or word[-1] != "s" or word[-2] in "us":
        return word
    if word[-2] == "e":
        if len(word) > 3 and word[-3] == "i" and word[-4] not in "ae":
            return word[:-3] + "y"
        if word[-3] in "iaoe":
            return word
    return word[:-1]


@functools.lru_cache(maxsize=1 << 20)  # per distinct word: indexing a million products repeats words a lot
def _term(token: str) -> str:
    token = _POSSESSIVE.sub("", token)
    return "" if not token or token in STOP_WORDS else minimal_stem(token)


def analyze(text: str) -> list[str]:
    return [t for t in map(_term, _TOKEN.findall(text.lower())) if t]


def document_text(product: Product) -> str:
    """convert_product_file_format.py: title, description, first bullet point, then the options."""
    options = ", and ".join(f"{name}: {', '.join(values)}" for name, values in product.options.items())
    first_bullet = product.bullet_points[0] if product.bullet_points else ""
    return " ".join([product.title, product.description, first_bullet, options]).lower()


class SearchEngine:
    """BM25 over all products; `search` returns asins, best first."""

    def __init__(self, products: list[Product]):
        self.asins = [p.asin for p in products]
        self._bm25 = bm25s.BM25(k1=K1, b=B, method="lucene")
        self._bm25.index([analyze(document_text(p)) for p in products], show_progress=False)

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[str]:
        tokens = [t for t in analyze(query) if t in self._bm25.vocab_dict]  # repeated terms count twice, as in Anserini
        if not tokens or k <= 0:
            return []
        scores = self._bm25.get_scores(tokens)
        hits = np.flatnonzero(scores > 0)  # Lucene returns matching documents only
        if hits.size > k:  # keep the k best; at the cut, ties go to the earlier product
            kth = np.partition(scores[hits], hits.size - k)[hits.size - k]
            above = hits[scores[hits] > kth]
            hits = np.concatenate([above, hits[scores[hits] == kth][: k - above.size]])
        order = np.lexsort((hits, -scores[hits]))
        return [self.asins[i] for i in hits[order]]


_ENGINES: dict[tuple, SearchEngine] = {}
_LOCK = threading.Lock()


def search_engine(data: WebshopData) -> SearchEngine:
    """One index per data folder per process, shared by every environment the process hosts."""
    with _LOCK:
        if data.key not in _ENGINES:
            _ENGINES[data.key] = SearchEngine(data.products)
        return _ENGINES[data.key]
