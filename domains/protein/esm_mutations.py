"""Masked-marginal mutation scoring with an ESM-style masked LM (ESM-1v, Meier et al. 2021, Eq. 1).

For a single substitution wt -> mt at residue i, with residue i masked and the rest of the wild type
as context::

    s(i, wt -> mt) = log p(x_i = mt | x_{-i}) - log p(x_i = wt | x_{-i})

A multi-mutant (``A24C:G50T``) scores the sum of its single effects, each with the wild-type context
and only its own position masked, as ESM's ``variant-prediction/predict.py`` (``masked-marginals``)
does; the paper's Eq. 1 masks all mutated positions of a multi-mutant at once, which is not done
here. A positive score means the model prefers the mutant. One forward pass per distinct mutated
position, batched.

Dimension letters: B masked copies per batch, T tokens (residues plus the tokenizer's specials),
V vocabulary. Not covered: the wild-type-marginal and pseudo-likelihood variants of ESM-1v,
insertions and deletions, sequences longer than the model's context (no sliding window).
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


def masked_log_probs(model, tok, wt: str, positions: list[int], batch_size: int = 16,
                     progress: bool = False) -> dict[int, list[float]]:
    """0-based residue index -> log p(x_i = v | x_{-i}) over the vocabulary, residue i masked."""
    import torch

    if tok.mask_token_id is None:
        raise ProteinError("the model's tokenizer has no mask token; masked-marginal scoring needs a masked LM")
    ids, start = encode_residues(tok, wt)
    cfg = model.config
    if getattr(cfg, "position_embedding_type", "") == "absolute" and len(ids) > cfg.max_position_embeddings - 2:
        fit = cfg.max_position_embeddings - 2 - (len(ids) - len(wt))
        raise ProteinError(f"the wild type has {len(wt)} residues; this model's absolute position embeddings fit at "
                           f"most {fit} (no sliding window)")
    device = next(model.parameters()).device
    base = torch.tensor(ids, dtype=torch.long)  # (T,)
    out: dict[int, list[float]] = {}
    todo = sorted(set(positions))
    with progress_bar("masked marginals", len(todo), enabled=progress) as bar, torch.no_grad():
        for k in range(0, len(todo), batch_size):
            chunk = todo[k:k + batch_size]
            rows = base.unsqueeze(0).repeat(len(chunk), 1)  # (B, T)
            cols = torch.tensor([start + i for i in chunk])  # (B,)
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
