"""The sampler: ProLLaMA-style unconditional and conditional generation written to FASTA.

Prompts follow ProLLaMA (``scripts/infer.py``): ``Seq=<`` for unconditional generation,
``[Generate by superfamily] Superfamily=<X>`` for a label (any ``LabelTask``). The prompt always runs on
into the answer's ``Seq=<`` (and a prefix), left open, with no separator: exactly the training text of a
generation record (``instruction + ' ' + input`` then the output ``Seq=<...>``). Decoding uses
``model.generate``, batched with left padding; each batch reseeds the RNG with ``seed + batch index`` so
a fixed seed and batch size reproduce the same FASTA.

``residues_only`` (on in the ``small`` preset, off in ``prollama``; ``--residues-only`` / ``--any-token``):
every token but the 20 standard amino-acid letters and the closing ``>`` is suppressed (``generate``'s
``suppress_tokens``, applied before temperature and top-k / top-p), i.e. sampling from the model's
distribution conditioned on the sequence continuing or closing properly. Without it a tiny stage-2 model,
which also learned to write label answers (``Family=<...>``), spends a few per cent of every step's
probability on ``</s>``, ``_``, digits and label letters, so that at temperature 1 many samples stop at a
stray ``</s>`` or run into label text long before the family's length. With it every sample ends at ``>`` or
at the length limit (``benchmarks/protein_generate``, ``res-t1.0``: complete 1.00), but the tiny model's
lengths are then its own, family-blind ones (0.51 x the real mean at temperature 1, 1.98 x at temperature
0.8 / top-p 0.95, vs 1.37 x unconstrained), so for the tiny model it did not bring lengths or the
low-complexity share nearer the real families; with the generation model preset it is part of the ``small``
setting chosen on validation (below). ProLLaMA decodes unconstrained.

Settings come in two presets (``PRESETS``): ``prollama`` is ProLLaMA's (temperature 0.2, top-k 40,
top-p 0.9, repetition penalty 1.2), made for a 7 B model; ``small`` (temperature 0.9, no top-k, top-p
0.95, no repetition penalty, ``residues_only``) for small models: chosen on a VALIDATION split (per seed,
2 sequences per family of the training side held out from both stages; the generation model preset
``model.preset=small``, 24 samples per family, 3 seeds) among temperatures 0.7-1.0, top-p 0.95 / 1.0,
``residues_only`` on / off and repetition penalty 1.0 / 1.1, by the criterion fixed before the runs (most
families meeting the length (KS) and low-complexity targets, then the mean KS p;
``benchmarks/protein_generate/results_small-validation.md``), and evaluated on the held-out sequences in
``results_small.md``. It keeps the low-complexity share of the samples, pooled over the families, within
1.5x the real one, where ProLLaMA's setting collapses into low complexity (0.66-0.84 of the residues vs
0.08); on the held-out sequences (24 samples per family) both meet the length target (KS p > 0.05 for at
least 3 of 5 families) in 1 of 3 seeds, and no plain setting of the grid in more.
``preset_for(model)`` picks ``small`` below ``SMALL_MODEL_PARAMS`` parameters (a threshold we
chose; only the tiny and small model presets were measured); every option can still be set one by one.

Length limit: ``resolve_max_new_tokens`` takes an explicit limit as given (an error if the prompt plus
the limit passes the model's position limit, ``config.max_position_embeddings``) or derives one:
1.5 x the longest training ``Seq=<...>`` line the model folder records (``training_data.py``), else
``DEFAULT_MAX_NEW_TOKENS`` (1024), cut to the position limit with a note saying so.
Generation stops at the closing ``>`` (a stop token when ``>`` is one token, ``stop_strings``
otherwise) or at EOS. A sample is *complete* when its ``>`` was produced; letters outside the 20
standard amino acids are flagged in the header (``invalid=<count>``), never silently dropped.

``length_prior`` (off in both presets; ``--length-prior``): a length-aware sampler, NOT plain sampling
from the model. Each conditional sample first draws a target length from the lengths of its label's
whole training sequences (``training_data.json`` ``label_lengths``, seeded by ``seed``); the closing
``>`` (and ``</s>`` and the other special tokens) is suppressed before that many residues and ``>`` is
forced at it (``EndAt``, a logits processor applied before temperature and top-k / top-p). The model
then writes only the residues; where the protein ends is the training data's, not the model's. It
exists because the tiny models do not learn where a family ends (``benchmarks/protein_generate``: at
the real end of a held-out sequence their p(``>``) is below 0.1 for every family; with the prior the
KS test passes for 4-5 of 5 families, without it for 2-3); it needs one token per residue and a
single-token ``>``, and a label the model folder records lengths for.

``guidance`` (1.0, off, in both presets; ``--guidance G``): classifier-free guidance (``guidance.py``), each step
leaning away from the model's prediction on ``Seq=<`` without the label. Measured on the generation benchmark it
did not bring lengths or low complexity nearer the families (it shortened samples and raised their low-complexity
share) and did not raise control accuracy; numbers in ``guidance.py``.

Caveat: with the character tokenizer, repetition penalty 1.2 soon applies to every amino acid (each
has been seen), so it mostly rescales the logits; it is kept as ProLLaMA's default and can be set to 1.

Dimension letters: B prompts per batch, P padded prompt length, G generated tokens.
Not covered: beam search; residues outside the 20 standard letters under ``residues_only``; the
constraint for subword vocabularies (it needs one token per residue and says so).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable

from adaptome.core.progress import progress_bar
from adaptome.domains.protein.data import LabelTask
from adaptome.domains.protein.formats import STANDARD_AA, ProteinError, fasta_text, invalid_positions

DEFAULT_MAX_NEW_TOKENS = 1024
SMALL_MODEL_PARAMS = 100_000_000


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings (defaults: ProLLaMA's); recorded in every FASTA header written.

    Args:
        temperature: softmax temperature; 0 decodes greedily (then top_k / top_p are unused).
        top_k: sample among the k most likely tokens.
        top_p: nucleus sampling: the smallest token set holding this probability mass.
        repetition_penalty: CTRL-style penalty on tokens already in the sequence (1.0: none).
        max_new_tokens: stop after this many generated tokens (a sequence without its closing
            ``>`` by then is flagged incomplete); see ``resolve_max_new_tokens``.
        seed: seed of the sampling RNG.
        batch_size: prompts decoded together.
        residues_only: inside the sequence, sample only the 20 standard amino-acid letters and the
            closing ``>``: every other token (``</s>``, ``<unk>``, ``=``, digits...) gets probability 0
            before temperature and top-k / top-p (see the module docstring). False: ProLLaMA's
            unconstrained decoding.
        length_prior: draw each conditional sample's length from its label's training lengths and
            end it there (``>`` suppressed before, forced at it; module docstring). Not plain sampling:
            lengths come from the data, not from the model. False: the model decides where to stop.
        guidance: classifier-free guidance scale (``guidance.py``): each step's log-probabilities are
            log p(w | x) + g (log p(w | label, x) - log p(w | x)), the unconditional branch being the same model
            on ``Seq=<`` and the same residues. 1.0: plain conditional sampling (no second branch).
    """

    temperature: float = 0.2
    top_k: int = 40
    top_p: float = 0.9
    repetition_penalty: float = 1.2
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int = 0
    batch_size: int = 16
    residues_only: bool = False
    length_prior: bool = False
    guidance: float = 1.0


#: decoding presets; ``small`` is chosen in benchmarks/protein_generate (results_small-validation.md there)
PRESETS = {
    "prollama": SamplingParams(),
    "small": SamplingParams(temperature=0.9, top_k=0, top_p=0.95, repetition_penalty=1.0, residues_only=True),
}


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def preset_for(model) -> str:
    """``small`` for a model under ``SMALL_MODEL_PARAMS`` parameters, else ``prollama``."""
    return "small" if n_parameters(model) < SMALL_MODEL_PARAMS else "prollama"


def position_limit(model) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def resolve_max_new_tokens(model, tok, prompts: list[str], requested: int | None,
                           info: dict | None = None) -> tuple[int, list[str]]:
    """(the limit, notes to print): ``requested`` as given (``ProteinError`` when it passes the
    position limit), else derived as the module docstring says."""
    longest = max((len(tok(p)["input_ids"]) for p in prompts), default=1)
    limit = position_limit(model)
    room = None if limit is None else limit - longest
    if requested is not None:
        if requested < 1:
            raise ProteinError(f"max_new_tokens must be >= 1, got {requested}")
        if room is not None and requested > room:
            raise ProteinError(f"max_new_tokens {requested} plus the longest prompt ({longest} tokens) passes the "
                               f"model's position limit {limit} (max_position_embeddings); use at most {room}")
        return requested, []
    notes = []
    train_max = (info or {}).get("max_sequence_tokens")
    if train_max:
        want = math.ceil(1.5 * train_max)
        notes.append(f"max_new_tokens {want}: 1.5 x the longest training sequence ({train_max} tokens)")
    else:
        want = DEFAULT_MAX_NEW_TOKENS
        notes.append(f"max_new_tokens {want}: the default (no training lengths saved with the model)")
    if room is not None and want > room:
        if room < 1:
            raise ProteinError(f"the prompt ({longest} tokens) fills the model's position limit {limit}")
        cut = f"; training sequences reach {train_max} tokens, longer samples are cut and flagged incomplete" \
            if train_max and train_max > room else ""
        notes.append(f"cut to {room} by the model's position limit {limit} (max_position_embeddings){cut}")
        want = room
    return want, notes


@dataclass(frozen=True)
class Sample:
    """One generated sequence.

    Args:
        condition: the label field it was conditioned on (``Family=<Cyclin_N>``) or ``unconditional``.
        label: the label (None when unconditional).
        prefix: the residues given after ``Seq=<``.
        seq: the generated residues (prefix included), up to the closing ``>``.
        complete: the closing ``>`` was generated within ``max_new_tokens``.
        invalid: 1-based positions of letters outside the 20 standard amino acids.
        n_tokens: tokens generated.
    """

    condition: str
    label: str | None
    prefix: str
    seq: str
    complete: bool
    invalid: tuple[int, ...]
    n_tokens: int

    @property
    def valid(self) -> bool:
        return self.complete and bool(self.seq) and not self.invalid


def _stop_ids(tok) -> tuple[list[int], bool]:
    ids = tok(">", add_special_tokens=False)["input_ids"]
    single = len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]).strip("▁Ġ") == ">"
    return ([tok.eos_token_id] + (ids if single else [])), single


def residue_suppression(tok) -> list[int]:
    """Token ids ``residues_only`` suppresses: all but the 20 standard amino-acid letters and ``>``.

    ``ProteinError`` when one of those is not a single token (a subword vocabulary): the constraint is
    defined for one token per residue only."""
    keep = []
    for ch in STANDARD_AA + ">":
        ids = tok(ch, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or tok.convert_ids_to_tokens(ids[0]).strip("▁Ġ") != ch:
            raise ProteinError(f"residues_only needs one token per residue, but {ch!r} is {len(ids)} token(s) "
                               "in this tokenizer; sample with residues_only off")
        keep.append(ids[0])
    return sorted(set(range(len(tok))) - set(keep))


def generate_continuations(model, tok, prompts: list[str], params: SamplingParams,
                           progress: bool = False, stop_at: list[int] | None = None) -> list[tuple[str, int]]:
    """(decoded continuation, generated-token count) per prompt, in order.

    With ``params.residues_only`` every generated token is constrained to a residue or ``>``: the
    prompts must leave ``Seq=<`` open (``prompt_plan`` does). ``stop_at`` (one per prompt): the
    generated-token count at which ``>`` is forced (and before which it is suppressed), as
    ``length_prior`` uses it. With ``params.guidance`` > 1 every prompt must be conditional (``guidance.py``)."""
    eos_ids, single = _stop_ids(tok)
    extra = {} if single else {"stop_strings": [">"], "tokenizer": tok}
    if params.residues_only:
        extra["suppress_tokens"] = residue_suppression(tok)
    out: list[tuple[str, int]] = []
    batches = [prompts[i:i + params.batch_size] for i in range(0, len(prompts), params.batch_size)]
    old_side = tok.padding_side
    tok.padding_side = "left"
    device = next(model.parameters()).device
    try:
        with progress_bar("sampling", len(prompts), enabled=progress) as bar:
            _generate_batches(model, tok, batches, params, eos_ids, extra, device, bar, out, stop_at)
    finally:
        tok.padding_side = old_side
    return out


def _generate_batches(model, tok, batches: list[list[str]], params: SamplingParams, eos_ids, extra: dict,
                      device, bar, out: list[tuple[str, int]], stop_at: list[int] | None = None) -> None:
    """Decode each batch of prompts, appending (continuation, generated-token count) to ``out``."""
    import torch

    done = 0
    for b, chunk in enumerate(batches):
        enc = tok(chunk, return_tensors="pt", padding=True).to(device)  # (B, P)
        more = dict(extra)
        processors = []
        if params.guidance != 1.0:
            from adaptome.domains.protein.guidance import Guidance, unconditional_prompt

            unc = tok([unconditional_prompt(p) for p in chunk], return_tensors="pt", padding=True).to(device)  # (B, U)
            processors.append(Guidance(model, unc["input_ids"], unc["attention_mask"], params.guidance,
                                       enc["input_ids"].shape[1]))
        if stop_at is not None:
            gt = tok(">", add_special_tokens=False)["input_ids"][0]
            processors.append(EndAt(stop_at[done:done + len(chunk)], enc["input_ids"].shape[1], gt,
                                    tok.all_special_ids))
        if processors:
            from transformers import LogitsProcessorList

            more["logits_processor"] = LogitsProcessorList(processors)
        done += len(chunk)
        torch.manual_seed(params.seed + b)
        with torch.no_grad():
            gen = model.generate(
                **enc, **_decoding(params), repetition_penalty=params.repetition_penalty,
                max_new_tokens=params.max_new_tokens, num_beams=1, eos_token_id=eos_ids,
                pad_token_id=tok.pad_token_id, **more)  # (B, P + G)
        new = gen[:, enc["input_ids"].shape[1]:]  # (B, G)
        for row in new.tolist():
            n = len(row)
            for j, t in enumerate(row):
                if t in eos_ids:
                    n = j + 1
                    break
            out.append((tok.decode(row[:n], skip_special_tokens=True), n))
        bar.advance(len(chunk))


class EndAt:
    """Logits processor of ``length_prior``: row i may not close (``>``) nor stop (``</s>``, or any special
    token, which would decode to no residue) before ``stop_at[i]`` generated tokens, and must close at
    exactly that count (every other token gets -inf there)."""

    def __init__(self, stop_at: list[int], prompt_len: int, close_id: int, banned: list[int]):
        self.stop_at, self.prompt_len, self.close_id = stop_at, prompt_len, close_id
        self.early = sorted(set(banned) | {close_id})

    def __call__(self, input_ids, scores):
        import torch

        g = input_ids.shape[1] - self.prompt_len  # tokens generated so far, (B, P + g) input
        for i, target in enumerate(self.stop_at):
            if g < target:
                scores[i, self.early] = -torch.inf
            else:
                keep = scores[i, self.close_id].clone()
                scores[i, :] = -torch.inf
                scores[i, self.close_id] = torch.where(torch.isfinite(keep), keep, torch.zeros_like(keep))
        return scores  # (B, V)


def target_lengths(plan: list[tuple[str | None, str]], label_lengths: dict[str, list[int]] | None, prefix: str,
                   max_new_tokens: int, seed: int) -> list[int]:
    """``length_prior``'s generated-token count per planned sample: a length drawn (seeded, with
    replacement) from the label's whole training sequences, minus the prefix's residues."""
    import random

    rng = random.Random(seed)
    out = []
    for label, _ in plan:
        if label is None:
            raise ProteinError("length_prior needs a label (conditional sampling): unconditional samples have no "
                               "label lengths to draw from")
        pool = (label_lengths or {}).get(label)
        if not pool:
            raise ProteinError(f"length_prior: the model records no training lengths for label {label!r} "
                               "(training_data.json label_lengths); sample without length_prior")
        n = rng.choice(pool) - len(prefix)
        if n < 1:
            raise ProteinError(f"length_prior: the prefix ({len(prefix)} residues) is not shorter than the drawn "
                               f"length {n + len(prefix)} of {label!r}")
        if n + 1 > max_new_tokens:
            raise ProteinError(f"length_prior: a drawn length of {n + len(prefix)} residues needs max_new_tokens >= "
                               f"{n + 1}, got {max_new_tokens}")
        out.append(n)
    return out


def _decoding(params: SamplingParams) -> dict:
    if params.temperature > 0:
        return {"do_sample": True, "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p}
    return {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}  # greedy


def parse_continuation(prompt: str, text: str) -> tuple[str, bool]:
    """(residues, complete): the ``Seq=<...`` value across prompt and continuation."""
    open_at = prompt.rfind("Seq=<")
    if open_at >= 0 and ">" not in prompt[open_at:]:
        body = prompt[open_at + 5:] + text
    else:
        k = text.find("Seq=<")
        if k < 0:
            return "", False
        body = text[k + 5:]
    end = body.find(">")
    return (body, False) if end < 0 else (body[:end], True)


def sample(model, tok, task: LabelTask | None, labels: Iterable[str | None], n_per_label: int,
           params: SamplingParams = SamplingParams(), prefix: str = "", progress: bool = False,
           label_lengths: dict[str, list[int]] | None = None) -> list[Sample]:
    """``n_per_label`` samples per label (``None`` = unconditional), in label order.

    ``ProteinError`` when ``params.max_new_tokens`` plus a prompt passes the model's position limit
    (``resolve_max_new_tokens`` picks a limit that fits). ``label_lengths`` (label -> whole training
    lengths, ``training_data.json``) is what ``params.length_prior`` draws from. ``prefix`` is cleaned as a
    sequence is (``clean_prefix``: upper case, amino-acid letters only)."""
    prefix = clean_prefix(prefix)
    plan = prompt_plan(task, labels, n_per_label, prefix)
    resolve_max_new_tokens(model, tok, sorted({p for _, p in plan}), params.max_new_tokens)
    if params.guidance != 1.0:
        from adaptome.domains.protein.guidance import check_scale

        check_scale(params.guidance)
        if any(label is None for label, _ in plan):
            raise ProteinError("guidance needs a label on every sample: an unconditional sample has no condition to "
                               "guide towards (sample it with guidance 1)")
    stop_at = None
    if params.length_prior:
        residue_suppression(tok)  # one token per residue and a single-token '>', or a clear error
        stop_at = target_lengths(plan, label_lengths, prefix, params.max_new_tokens, params.seed)
    conts = generate_continuations(model, tok, [p for _, p in plan], params, progress, stop_at)
    out = []
    for (label, prompt), (text, n) in zip(plan, conts):
        seq, complete = parse_continuation(prompt, text)
        cond = task.label_field(label) if (task and label is not None) else "unconditional"
        out.append(Sample(cond, label, prefix, seq, complete, tuple(invalid_positions(seq)), n))
    return out


HEADER_SEP = " | "  # between the fields of a sample's FASTA header (``header``)


def clean_prefix(prefix: str, what: str = "prefix") -> str:
    """``prefix`` upper-cased (as FASTA input is), with surrounding blanks dropped; a ``ProteinError`` naming
    ``what`` when it holds anything but the 20 standard amino-acid letters (the prompt runs on into the
    answer's ``Seq=<``, so a ``>`` or a label character there would end or corrupt every sample)."""
    clean = prefix.strip().upper()
    bad = next((ch for ch in clean if ch not in STANDARD_AA), None)
    if bad is not None:
        raise ProteinError(f"{what} {prefix!r}: {bad!r} is not an amino-acid letter (give residues of "
                           f"{STANDARD_AA}, e.g. MKV)")
    return clean


def check_header_label(label: str | None, what: str = "label") -> None:
    """Refuse a label that ``header`` could not write into a FASTA header that ``parse_header`` reads back:
    one holding the field separator ``' | '`` or a line break."""
    if label is None:
        return
    if HEADER_SEP in label or "\n" in label or "\r" in label:
        sep = "a line break" if HEADER_SEP not in label else repr(HEADER_SEP)
        raise ProteinError(f"{what} {label!r}: a label with {sep} cannot be written into a sample's FASTA header "
                           "(its fields are separated by ' | '); rename the label")


def prompt_plan(task: LabelTask | None, labels: Iterable[str | None], n_per_label: int,
                prefix: str = "") -> list[tuple[str | None, str]]:
    """(label, prompt) per sample, ``n_per_label`` per label, in label order; every prompt leaves the
    answer's ``Seq=<`` open (with the prefix), as the generation records' training text runs on into it.
    A label ``header`` cannot write is refused (``check_header_label``)."""
    plan: list[tuple[str | None, str]] = []
    for label in labels:
        if label is not None and task is None:
            raise ValueError("a label needs a LabelTask")
        check_header_label(label)
        prompt = (task.generate_prompt(label, prefix, open_seq=True) if (task and label is not None)
                  else "Seq=<" + prefix)
        plan += [(label, prompt)] * n_per_label
    return plan


def with_preset(name: str, **overrides) -> SamplingParams:
    """A preset with the given fields replaced (``None`` values keep the preset's)."""
    if name not in PRESETS:
        raise ProteinError(f"unknown sampling preset {name!r}; known: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def header(i: int, s: Sample, params: SamplingParams, model: str | None = None,
           model_weights: str | None = None) -> str:
    """``gen-0001 condition=Family=<X> | prefix=MK | temperature=0.2 | ... | complete=yes | invalid=0 | length=N``
    (``evaluate`` tells a file cut mid-record by it), then
    ``| model_weights=<digest>`` (``core.train.identity.weights_digest``: ``evaluate`` tells a model retrained in
    place since by it) and ``| model=<folder or hub id>`` when ``model`` is given (``evaluate`` compares it with its
    ``--model``; a name holding the field separator or a line break is written as ``?``)."""
    check_header_label(s.condition, "condition")
    parts = [f"gen-{i:04d} condition={s.condition}", f"prefix={s.prefix or '-'}"]
    parts += [f"{k}={v}" for k, v in asdict(params).items()]
    parts += [f"complete={'yes' if s.complete else 'no'}", f"invalid={len(s.invalid)}", f"length={len(s.seq)}"]
    if model_weights is not None:
        parts.append(f"model_weights={model_weights}")
    if model is not None:  # last: a path may hold anything but the separator
        unwritable = HEADER_SEP in model or "\n" in model or "\r" in model
        parts.append(f"model={'?' if unwritable else model}")
    return HEADER_SEP.join(parts)


def parse_header(h: str) -> dict[str, str]:
    """Inverse of ``header`` (values as strings; ``id`` holds the record name)."""
    first, *rest = h.split(HEADER_SEP)
    rid, _, cond = first.partition(" condition=")
    out = {"id": rid, "condition": cond}
    for part in rest:
        k, _, v = part.partition("=")
        out[k] = v
    return out


def samples_fasta(samples: list[Sample], params: SamplingParams, model: str | None = None,
                  model_weights: str | None = None) -> str:
    """The samples as FASTA text, each header holding its condition, the sampling parameters and the model."""
    return fasta_text((header(i, s, params, model, model_weights), s.seq) for i, s in enumerate(samples, 1))


def write_samples(samples: list[Sample], params: SamplingParams, path: str | Path, model: str | None = None,
                  model_weights: str | None = None) -> Path:
    """``samples_fasta`` written to ``path`` atomically."""
    from adaptome.core.atomic import write_text_atomic

    return write_text_atomic(path, samples_fasta(samples, params, model, model_weights))

