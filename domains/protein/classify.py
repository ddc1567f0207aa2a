"""Label prediction with the instruction-tuned model, and the log-likelihood scorer it shares with
mutation scoring and perplexity.

``score_targets(model, tok, pairs)`` returns, for each (prompt, target), the summed log-probability
of the target's tokens given the prompt, sum_t log p(y_t | prompt, y_<t), and the token count.
Three ways to predict a label for sequence s from candidates C:

* ``determine`` (default): argmax_c log p(``{Key}=<c>`` + EOS | ``[Determine {name}] Seq=<s>``),
  ProLLaMA's understanding task scored over the candidate set instead of free decoding;
* ``bayes``: argmax_c log p(``Seq=<s>`` + EOS | ``[Generate by {name}] {Key}=<c>``), the
  generation task read as a class-conditional likelihood with a uniform prior;
* ``generate``: greedy decoding after the determine prompt, exact match of the label string
  (ProLLaMA's accuracy); an answer outside C is reported as-is.

Dimension letters: B pairs per batch, L padded length, V vocabulary.
Not covered: multi-label answers scored per component.
"""

from __future__ import annotations

from typing import Literal

from adaptome.core.progress import progress_bar
from adaptome.domains.protein.data import LabelTask
from adaptome.domains.protein.formats import ProteinError, seq_line
from adaptome.domains.protein.tokenizer import encode

Method = Literal["determine", "bayes", "generate"]


def score_targets(model, tok, pairs: list[tuple[str, str]], batch_size: int = 16,
                  add_eos: bool = True, progress: bool = False) -> list[tuple[float, int]]:
    """(sum log p(target | prompt), target tokens) per pair; prompt gets ``<s>``, target ``</s>``."""
    import torch

    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    with progress_bar("scoring", len(pairs), enabled=progress) as bar:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            rows, starts = [], []
            for prompt, target in chunk:
                src = encode(tok, prompt, bos=True)
                tgt = encode(tok, target, bos=False) + ([tok.eos_token_id] if add_eos else [])
                rows.append(src + tgt)
                starts.append(len(src))
            n = max(len(r) for r in rows)
            ids = torch.full((len(rows), n), tok.pad_token_id, dtype=torch.long)  # (B, L)
            mask = torch.zeros_like(ids)  # (B, L)
            for j, r in enumerate(rows):
                ids[j, :len(r)] = torch.tensor(r)
                mask[j, :len(r)] = 1
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # (B, L, V)
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, L-1, V): predicts token t+1
            tok_lp = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)  # (B, L-1)
            for j, r in enumerate(rows):
                lo, hi = starts[j] - 1, len(r) - 1  # positions predicting the target tokens
                out.append((float(tok_lp[j, lo:hi].sum()), hi - lo))
            bar.advance(len(chunk))
    return out


def classify(model, tok, task: LabelTask, seqs: list[str], candidates: list[str], method: Method = "determine",
             batch_size: int = 16, progress: bool = False) -> list[dict]:
    """One dict per sequence: ``pred`` and, for likelihood methods, ``scores`` per candidate."""
    if not candidates:
        raise ProteinError("classify needs at least one candidate label")
    if method == "generate":
        from adaptome.domains.protein.formats import FormatError, parse_field
        from adaptome.domains.protein.sample import SamplingParams, generate_continuations

        # greedy, no repetition penalty: the label's letters already occur in the prompt
        longest = max(len(task.label_field(c)) for c in candidates)
        params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=longest + 4,
                                batch_size=batch_size)
        conts = generate_continuations(model, tok, [task.determine_prompt(s) for s in seqs], params, progress)
        preds = []
        for text, _ in conts:
            try:
                preds.append({"pred": parse_field(text.split(">")[0] + ">", task.key)[1]})
            except FormatError:
                preds.append({"pred": text.strip()})
        return preds
    if method == "determine":
        pairs = [(task.determine_prompt(s), task.label_field(c)) for s in seqs for c in candidates]
    elif method == "bayes":
        pairs = [(task.generate_prompt(c), seq_line(s)) for s in seqs for c in candidates]
    else:
        raise ProteinError(f"unknown classification method {method!r}; known: determine, bayes, generate")
    scores = score_targets(model, tok, pairs, batch_size, progress=progress)
    out = []
    k = len(candidates)
    for i in range(len(seqs)):
        row = {c: scores[i * k + j][0] for j, c in enumerate(candidates)}
        out.append({"pred": max(row, key=row.get), "scores": row})
    return out
