"""Low-complexity share: the fraction of residues that lie in a window of low Shannon entropy.

This is the trigger step of SEG (Wootton & Federhen 1993, "Statistics of local complexity in amino
acid sequences and sequence databases", Computers & Chemistry 17:149-163; parameters as in Wootton &
Federhen 1996, Methods in Enzymology 266:554-571): slide a window of ``window`` residues (SEG's
default 12) along the sequence; a window whose compositional entropy

    K = -sum_a (n_a / w) log2(n_a / w)        (n_a: count of residue a in the window, w = window)

is at most ``k1`` bits (SEG's trigger complexity 2.2) is low-complexity, and so is every residue in
it. The share of a set is pooled: flagged residues / all residues. A run of one residue has K = 0;
twelve different residues have K = log2 12 = 3.585 bits.

Our own implementation, written from the papers' definitions. Not covered: SEG's extension of a
triggered window up to the K2 threshold (2.5 bits) and its trimming to the least probable
subsequence, so the share here is the trigger region only; sequences shorter than one window have no
window and are never flagged (their residues still count in the denominator).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable

SEG_WINDOW = 12
SEG_K1 = 2.2


def entropy_bits(window: str) -> float:
    """Shannon entropy (bits) of the residue composition of ``window``: ``K`` above."""
    n = len(window)
    return -sum((c / n) * math.log2(c / n) for c in Counter(window).values()) if n else 0.0


def low_complexity_mask(seq: str, window: int = SEG_WINDOW, k1: float = SEG_K1) -> list[bool]:
    """Per residue: True when some full window holding it has entropy <= ``k1`` bits."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    mask = [False] * len(seq)
    counts: Counter[str] = Counter(seq[:window])
    for start in range(0, len(seq) - window + 1):
        if start:  # slide: drop the residue that left, add the one that entered
            out, into = seq[start - 1], seq[start + window - 1]
            counts[out] -= 1
            if not counts[out]:
                del counts[out]
            counts[into] += 1
        k = -sum((c / window) * math.log2(c / window) for c in counts.values())
        if k <= k1 + 1e-12:
            mask[start:start + window] = [True] * window
    return mask


def low_complexity_share(seqs: Iterable[str], window: int = SEG_WINDOW, k1: float = SEG_K1) -> float:
    """Pooled share of residues flagged by ``low_complexity_mask`` over ``seqs`` (0 for no residues)."""
    flagged = total = 0
    for s in seqs:
        m = low_complexity_mask(s, window, k1)
        flagged += sum(m)
        total += len(m)
    return flagged / total if total else 0.0
