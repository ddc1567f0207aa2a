"""Masked-marginal mutation scoring with an ESM-style masked LM (ESM-1v, Meier et al. 2021, Eq. 1).

For a single substitution wt -> mt at residue i, with residue i masked and the rest of the wild type
as context::

    s(i, wt -> mt) = log p(x_i = mt | x_{-i}) - log p(x_i = wt | x_{-i})

A multi-mutant (``A24C:G50T``) scores the sum of its single effects, each with the wild-type context
and only its own position masked, as ESM's ``variant-prediction/predict.py`` (``masked-marginals``)
does; the paper's Eq. 1 masks all mutated positions of a multi-mutant at once, which is not done
here. A positive score means the model prefers the mutant. One forward pass per distinct mutated
position, batched.

A wild type longer than the model reads at once (``residue_window``: ``max_position_embeddings`` less the
tokenizer's specials and ESM's position offset of 2, i.e. 1,022 residues for ESM-1v / ESM-2) is scored in a
window of that many residues around each masked site: centred on it, shifted to stay inside the protein (so
the first and last sites get the first and last window). Each site then sees at most the context the model was
trained with, never positions it has no embedding for (absolute) or never saw (rotary); the context differs from
site to site, and ``score-mutations`` says so.

Dimension letters: B masked copies per batch, T tokens (residues plus the tokenizer's specials),
V vocabulary. Not covered: the wild-type-marginal and pseudo-likelihood variants of ESM-1v,
insertions and deletions; a multi-mutant whose sites lie farther apart than one window still sums single effects,
each scored in its own window.
"""

from __future__ import annotations

from adaptome.core.progress import progress_bar
from adaptome.domains.protein.formats import STANDARD_AA, ProteinError


def residue_ids(tok) -> dict[str, int]:
    """Token id of each standard amino acid; an error when the tokenizer lacks one."""
    ids = {aa: tok.convert_tokens_to_ids(aa) for aa in STANDARD_AA}
    missing = [aa for aa, i in ids.items() if i is None or i == tok.unk_token_id]
    if missing:
        raise ProteinError(f"the model's tokenizer has no token for residue(s) {''.join(missing)}")
    return ids


def encode_residues(tok, wt: str) -> tuple[list[int], int]:
    """(token ids of ``wt`` with the specials, index of the first residue's token); one token per residue."""
    ids = residue_ids(tok)
    bare = [ids[aa] for aa in wt]
    full = tok(wt, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return list(full), start
    raise ProteinError("the model's tokenizer does not map the wild type to one token per residue")


def residue_window(model, tok) -> int | None:
    """Residues the model reads at once: ``max_position_embeddings`` less the tokenizer's specials (``<cls>``,
    ``<eos>``) and ESM's position offset (ids start after the padding index, 2 in all); None when the config
    sets no limit."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        return None
    n_special = len(tok("A", add_special_tokens=True)["input_ids"]) - 1
    return limit - 2 - n_special


def window_start(i: int, length: int, window: int) -> int:
    """First residue of the ``window`` residues scored for site ``i`` of a protein of ``length`` residues: the
    window centred on ``i``, shifted to stay inside the protein (0 when the protein fits)."""
    if length <= window:
        return 0
    return min(max(0, i - window // 2), length - window)


def masked_log_probs(model, tok, wt: str, positions: list[int], batch_size: int = 16,
                     progress: bool = False) -> dict[int, list[float]]:
    """0-based residue index -> log p(x_i = v | x_{-i}) over the vocabulary, residue i masked; a wild type longer
    than ``residue_window`` is read in a window around each site (``window_start``, module docstring)."""
    import torch

    if tok.mask_token_id is None:
        raise ProteinError("the model's tokenizer has no mask token; masked-marginal scoring needs a masked LM")
    window = residue_window(model, tok) or len(wt)
    if window < 1:
        raise ProteinError(f"the model's max_position_embeddings {model.config.max_position_embeddings} leaves no "
                           "room for a residue")
    encoded: dict[int, tuple[list[int], int]] = {}  # window start -> (token ids, index of its first residue)
    device = next(model.parameters()).device
    out: dict[int, list[float]] = {}
    todo = sorted(set(positions))
    with progress_bar("masked marginals", len(todo), enabled=progress) as bar, torch.no_grad():
        for k in range(0, len(todo), batch_size):
            chunk = todo[k:k + batch_size]
            starts = [window_start(i, len(wt), window) for i in chunk]
            for w0 in starts:
                if w0 not in encoded:
                    encoded[w0] = encode_residues(tok, wt[w0:w0 + window])
            # every window holds min(len(wt), window) residues, so the rows have one length
            rows = torch.tensor([encoded[w0][0] for w0 in starts], dtype=torch.long)  # (B, T)
            cols = torch.tensor([encoded[w0][1] + i - w0 for i, w0 in zip(chunk, starts)])  # (B,)
            rows[torch.arange(len(chunk)), cols] = tok.mask_token_id
            logits = model(input_ids=rows.to(device), attention_mask=torch.ones_like(rows).to(device)).logits
            picked = logits.float()[torch.arange(len(chunk)), cols.to(device)]  # (B, T, V) -> (B, V)
            logp = torch.log_softmax(picked, dim=-1)  # (B, V)
            for j, i in enumerate(chunk):
                out[i] = logp[j].tolist()
            bar.advance(len(chunk))
    return out


def score_mutants_masked(model, tok, wt: str, mutants: list[list[tuple[str, int, str]]], offset: int = 0,
                         batch_size: int = 16, progress: bool = False) -> list[float]:
    """Sum over each mutant's substitutions (ref, position, alt) of log p(alt) - log p(ref) at the masked
    position ``position - offset`` (positions already checked against ``wt``)."""
    ids = residue_ids(tok)
    lp = masked_log_probs(model, tok, wt, [pos - offset for m in mutants for _, pos, _ in m], batch_size, progress)
    return [sum(lp[pos - offset][ids[alt]] - lp[pos - offset][ids[ref]] for ref, pos, alt in m) for m in mutants]
