"""Retrieval: cosine top-M from the library, re-scored by utility (UCB in training, greedy in eval)."""

from __future__ import annotations

import numpy as np

from skill1.algo.utility import ucb_scores
from skill1.types import Candidate, RetrievalSettings


def retrieve(library, encoder, queries: list[str], s: RetrievalSettings, total_uses: int) -> list[list[Candidate]]:
    """Top-k candidates per query, best first. An empty library gives empty lists (no encoder call)."""
    if library is None or library.size() == 0 or not queries:
        return [[] for _ in queries]
    hits = library.search(encoder.encode(queries), s.top_m)
    out = []
    for row in hits:
        if not row:
            out.append([])
            continue
        u = np.array([sk.utility for sk, _ in row])
        n = np.array([sk.uses for sk, _ in row], dtype=np.float64)
        sim = np.array([sim for _, sim in row])
        scores = ucb_scores(u, n, sim, total_uses, s.exploration, s.similarity_weight)
        best = np.argsort(-scores, kind="stable")[: s.top_k]
        out.append([Candidate(row[i][0].id, row[i][0].scenario, row[i][0].strategy, row[i][0].utility,
                              row[i][0].uses, float(sim[i]), float(scores[i])) for i in best])
    return out
