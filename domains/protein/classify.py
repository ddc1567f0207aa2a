"""Label prediction with the instruction-tuned model, and the log-likelihood scorer it shares with
mutation scoring and perplexity.

``score_targets(model, tok, pairs)`` returns, for each (prompt, target), the summed log-probability
of the target's tokens given the prompt, sum_t log p(y_t | prompt, y_<t), and the token count.
Five ways to predict a label for sequence s from candidates C:

* ``determine``: argmax_c log p(``{Key}=<c>`` + EOS | ``[Determine {name}] Seq=<s>``), ProLLaMA's
  understanding task scored over the candidate set instead of free decoding;
* ``bayes``: argmax_c log p(``Seq=<s>`` + EOS | ``[Generate by {name}] {Key}=<c>``), the generation
  task read as a class-conditional likelihood with a uniform prior;
* ``combined``: argmax_c [log_softmax_C(determine)_c + log_softmax_C(bayes)_c], the sum
  of the two scores each normalised over the candidates, i.e. the product of the two posteriors
  p(c | s) (a product of experts; neither score is rescaled otherwise);
* ``generate``: greedy decoding after the determine prompt, ProLLaMA's exact-match accuracy. An
  answer is a label only when it is exactly ``{Key}=<c>`` with its closing ``>``; anything else
  (``Pki=<``, a missing ``>``, ``Family=<Cycli=<CS>``) is reported as ``malformed`` and a well-formed label outside C as
  ``unknown_label``, never mapped to a candidate;
* ``probe`` (default): a logistic regression on the model's hidden states mean-pooled over the
  residues, fitted on labelled training sequences (``train``), its layers and C chosen by
  cross-validation on those training sequences only (``probe.py``): the linear probe users put on
  ESM / ProtTrans embeddings. It needs ``train`` and names only candidates with training examples.

The default was chosen by measurement (``benchmarks/protein_classify/results.md``): 15 held-out
full-length sequences of 5 shipped Pfam families x 3 seeds, tiny LLaMA after both stages (whole
records, the tiny presets' steps), mean accuracy ``probe`` 0.911 (0.933, 0.933, 0.867), ``combined``
0.778, ``bayes`` 0.689, ``determine`` 0.622, ``generate`` 0.333, beside the 3-mer logistic regression
0.822 and the majority class 0.200 on the same sequences: the probe reaches the 3-mer baseline on every
seed (the baseline: 0.800, 0.933, 0.733), the likelihood methods do not. Length normalisation: for one
sequence every candidate scores the same ``bayes`` target, so ``bayes``'s argmax does not depend on
it; inside ``combined`` a per-residue ``bayes`` score is nearly flat over the candidates, so
``determine`` decides alone (0.622), hence ``bayes`` enters summed over residues. Training length:
on the model's own training sequences ``bayes`` is 1.000 and ``determine`` 0.706; 1000 instead of
600 stage-2 steps (``results_s2-1000.md``) raise training-side ``determine`` to 0.853 but lower
held-out ``bayes`` to 0.533 and ``combined`` to 0.711: the tiny model memorises its 34 training
sequences rather than learning their families, which hurts the likelihood scores; the probe reads
the same model's representations and does not depend on the likelihood of held-out sequences.
Regularising stage 2 against that (LoRA dropout 0.1 and weight decay 0.1), compared on a validation
split of the training side only (``results_val-base.md`` / ``results_val-dropout-wd.md``): ``probe``
0.933 vs 0.967 without, ``combined`` 0.733 both, training-side ``bayes`` still 1.000; not adopted.

Queries are cropped exactly as ``build-dataset`` cropped the training records
(``data.determine_input`` / ``data.generate_answer`` with ``max_seq_length`` and the candidate that
takes the most tokens), so a long protein is read as the model saw long proteins in training; a
``bayes`` target cropped open (no ``>``) is scored without EOS. ``with_baselines`` adds the majority
class and the 3-mer logistic regression (``kmer.py``) fitted on labelled training sequences.

Dimension letters: B pairs per batch, L padded length, V vocabulary, N sequences, C candidates.
Not covered: multi-label answers scored per component; priors other than uniform in ``bayes``.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from adaptome.core.progress import progress_bar
from adaptome.domains.protein.data import LabelTask, determine_input, generate_answer, widest_label
from adaptome.domains.protein.formats import FormatError, ProteinError, Record, is_open_field, parse_field
from adaptome.domains.protein.tokenizer import encode

Method = Literal["determine", "bayes", "combined", "generate", "probe"]
METHODS = ("determine", "bayes", "combined", "generate", "probe")
#: the best of determine / bayes / combined / probe on held-out Pfam sequences, 3 seeds (module docstring)
DEFAULT_METHOD: Method = "probe"
#: the instruction stage's default token limit (``InstructConfig.max_seq_length``)
DEFAULT_MAX_SEQ_LENGTH = 256


def score_targets(model, tok, pairs: list[tuple[str, str]], batch_size: int = 16,
                  add_eos: bool | list[bool] = True, progress: bool = False) -> list[tuple[float, int]]:
    """(sum log p(target | prompt), target tokens) per pair; prompt gets ``<s>``, target ``</s>``
    (``add_eos`` for all pairs or one flag per pair)."""
    import torch

    eos_flags = add_eos if isinstance(add_eos, list) else [add_eos] * len(pairs)
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    with progress_bar("scoring", len(pairs), enabled=progress) as bar:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            rows, starts = [], []
            for (prompt, target), eos in zip(chunk, eos_flags[i:i + batch_size]):
                src = encode(tok, prompt, bos=True)
                tgt = encode(tok, target, bos=False) + ([tok.eos_token_id] if eos else [])
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


def _log_softmax(row: dict[str, float]) -> dict[str, float]:
    """log p(c) = s_c - logsumexp_C(s): a score row normalised over the candidates."""
    import math

    top = max(row.values())
    lse = top + math.log(sum(math.exp(v - top) for v in row.values()))
    return {c: v - lse for c, v in row.items()}


def _score_rows(model, tok, task: LabelTask, seqs: list[str], candidates: list[str], kind: str,
                max_seq_length: int | None, batch_size: int, progress: bool) -> list[dict[str, float]]:
    """Per sequence, candidate -> log-likelihood score of the ``determine`` or ``bayes`` kind."""
    k = len(candidates)
    if kind == "determine":
        widest = widest_label(tok, candidates, task.label_field)
        crops = [determine_input(tok, task, s, widest, max_seq_length) for s in seqs]
        pairs = [(task.determine_prompt(q), task.label_field(c)) for q in crops for c in candidates]
        eos = [True] * len(pairs)
    else:
        widest = widest_label(tok, candidates, task.generate_prompt)
        targets = [generate_answer(tok, task, s, widest, max_seq_length) for s in seqs]
        pairs = [(task.generate_prompt(c), t) for t in targets for c in candidates]
        eos = [not is_open_field(t) for t in targets for _ in candidates]
    scores = score_targets(model, tok, pairs, batch_size, add_eos=eos, progress=progress)
    return [{c: scores[i * k + j][0] for j, c in enumerate(candidates)} for i in range(len(seqs))]


def parse_answer(text: str, task: LabelTask, candidates: list[str]) -> tuple[str | None, str]:
    """(label or None, status) of a decoded answer: ``ok``, ``unknown_label`` or ``malformed``."""
    end = text.find(">")
    if end < 0:
        return None, "malformed"  # no closing '>' within the decoding budget
    try:
        label = parse_field(text[:end + 1], task.key)[1]
    except FormatError:
        return None, "malformed"
    if not label or "<" in label:  # empty, or a second field run into the first (``Cycli=<CS``)
        return None, "malformed"
    return label, ("ok" if label in candidates else "unknown_label")


def _generate(model, tok, task: LabelTask, seqs: list[str], candidates: list[str], max_seq_length: int | None,
              batch_size: int, progress: bool) -> list[dict]:
    from adaptome.domains.protein.sample import SamplingParams, generate_continuations

    widest = widest_label(tok, candidates, task.label_field)
    crops = [determine_input(tok, task, s, widest, max_seq_length) for s in seqs]
    # greedy, no repetition penalty: the label's letters already occur in the prompt
    longest = max(len(encode(tok, task.label_field(c), bos=False)) for c in candidates)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=longest + 4,
                            batch_size=batch_size)
    conts = generate_continuations(model, tok, [task.determine_prompt(q) for q in crops], params, progress)
    out = []
    for text, _ in conts:
        label, status = parse_answer(text, task, candidates)
        out.append({"pred": label, "status": status, "answer": text})
    return out


def classify(model, tok, task: LabelTask, seqs: list[str], candidates: list[str], method: Method = DEFAULT_METHOD,
             batch_size: int = 16, progress: bool = False,
             max_seq_length: int | None = DEFAULT_MAX_SEQ_LENGTH, train: list[Record] | None = None) -> list[dict]:
    """One dict per sequence: ``pred`` (None for a malformed answer), ``status`` (``ok``,
    ``unknown_label``, ``malformed``) and, for the likelihood methods and ``probe``, ``scores`` per
    candidate (``probe``: log-probabilities; its first dict also holds ``probe``, what cross-validation
    chose, see ``probe.ProbeFit``).

    ``max_seq_length``: the instruction stage's token limit the queries are cropped to (None: no crop).
    ``train``: labelled training sequences, required by ``probe`` (its logistic regression is fitted on them).
    """
    if not candidates:
        raise ProteinError("classify needs at least one candidate label")
    if method not in METHODS:
        raise ProteinError(f"unknown classification method {method!r}; known: {', '.join(METHODS)}")
    candidates = list(dict.fromkeys(candidates))
    if method == "generate":
        return _generate(model, tok, task, seqs, candidates, max_seq_length, batch_size, progress)
    if method == "probe":
        return _probe(model, tok, task, seqs, candidates, max_seq_length, batch_size, train)
    kinds = ["determine", "bayes"] if method == "combined" else [method]
    rows = {k: _score_rows(model, tok, task, seqs, candidates, k, max_seq_length, batch_size, progress)
            for k in kinds}
    out = []
    for i in range(len(seqs)):
        if method == "combined":
            d, b = _log_softmax(rows["determine"][i]), _log_softmax(rows["bayes"][i])
            row = {c: d[c] + b[c] for c in candidates}
        else:
            row = rows[method][i]
        out.append({"pred": max(row, key=row.get), "status": "ok", "scores": row})
    return out


def _probe(model, tok, task: LabelTask, seqs: list[str], candidates: list[str], max_seq_length: int | None,
           batch_size: int, train: list[Record] | None) -> list[dict]:
    from adaptome.domains.protein.probe import ProbeConfig, fit_probe, predict_probe

    if not train or any(r.label is None for r in train):
        raise ProteinError("the probe method needs labelled training sequences (train=..., --train)")
    cfg = ProbeConfig(batch_size=batch_size)
    fit = fit_probe(model, tok, task, [r.seq for r in train], [r.label for r in train], candidates,
                    max_seq_length, cfg)
    rows = predict_probe(model, tok, task, fit, seqs, candidates, max_seq_length, batch_size)
    out = [{"pred": max(row, key=row.get), "status": "ok", "scores": row} for row in rows]
    if out:
        out[0]["probe"] = {"layers": fit.layers, "C": fit.c, "cv_accuracy": fit.cv_accuracy}
    return out


def with_baselines(train: list[Record], test_seqs: list[str], preds: list[dict],
                   y_true: list[str] | None = None, k: int = 3, seed: int = 0) -> dict:
    """The model's predictions beside the majority class and the k-mer logistic regression, both fitted
    on ``train`` and applied to the same ``test_seqs``.

    Always: the majority class, the baseline's predictions (``kmer_predictions``), the model's
    agreement with it, and the counts of malformed / unknown-label answers. With ``y_true``:
    accuracy of the model (a malformed or unknown answer counts as wrong), of the majority class and
    of the k-mer baseline, on the same sequences.
    """
    from adaptome.core.evaluation import accuracy
    from adaptome.domains.protein.kmer import KmerClassifier

    labels = [r.label for r in train]
    if any(lab is None for lab in labels):
        raise ProteinError("the training sequences for the baselines need labels")
    majority = Counter(labels).most_common(1)[0][0]
    km = KmerClassifier(k, seed=seed).fit([r.seq for r in train], labels).predict(test_seqs)
    model = [p["pred"] for p in preds]
    status = Counter(p.get("status", "ok") for p in preds)
    rep = {"n_test": len(test_seqs), "n_train": len(train), "n_classes": len(set(labels)),
           "majority_class": majority, "kmer_k": k, "kmer_predictions": km,
           "n_malformed": status["malformed"], "n_unknown_label": status["unknown_label"],
           "model_kmer_agreement": sum(a == b for a, b in zip(model, km)) / max(len(km), 1)}
    if y_true is not None:
        rep.update(model_accuracy=accuracy(y_true, [m if m is not None else "" for m in model]),
                   majority_accuracy=accuracy(y_true, [majority] * len(y_true)),
                   kmer_lr_accuracy=accuracy(y_true, km))
    return rep


def baseline_lines(rep: dict, method: str) -> list[str]:
    """The report of ``with_baselines`` as the lines ``classify`` prints."""
    n = rep["n_test"]
    if "model_accuracy" in rep:
        lines = [f"accuracy on {n} sequences: model ({method}) {rep['model_accuracy']:.3f}",
                 f"  majority class ({rep['majority_class']}) {rep['majority_accuracy']:.3f}",
                 f"  {rep['kmer_k']}-mer logistic regression {rep['kmer_lr_accuracy']:.3f}"]
    else:
        lines = [f"{n} sequences without true labels: no accuracy",
                 f"  majority class of the training set: {rep['majority_class']}",
                 f"  model ({method}) agrees with the {rep['kmer_k']}-mer logistic regression on "
                 f"{rep['model_kmer_agreement']:.3f} of them"]
    lines.append(f"  baselines fitted on {rep['n_train']} labelled training sequences, {rep['n_classes']} classes")
    if method == "generate":
        lines.append(f"  malformed answers: {rep['n_malformed']}; well-formed labels outside the candidates: "
                     f"{rep['n_unknown_label']} (both counted as wrong)")
    return lines
