"""Stage 2: instruction tuning on ``{instruction, input, output}`` records (ProLLaMA ``run_it.sh``,
``build_instruction_dataset.py``).

Each record becomes source = ``<s>`` + ``instruction + ' ' + input`` and target = ``output`` +
``</s>``, concatenated with no separator. Labels are -100 on every source token, so the loss covers
only the answer and its EOS (the "prompt mask").

No record is ever cut past ``max_seq_length`` tokens with its answer lost (ProLLaMA truncates the
token row, which drops the label of a ``[Determine ...]`` record on a long protein). A record that
does not fit is *fitted* instead (``fit_record``): the protein is cropped, never the answer --

* the answer is a sequence (``Seq=<...>``, a generation record): it keeps its longest N-terminal part
  that fits and is left *open* (``Seq=<MKV...`` without ``>``), and no ``</s>`` follows an open answer,
  so the model never learns an end that is not the protein's real end;
* the prompt holds the sequence (``input`` is ``Seq=<...>``, an understanding record): the input is
  cropped to its longest N-terminal part that fits beside the whole answer (and stays closed, ``>``
  being the delimiter before the answer).

``build-dataset`` fits its records the same way when it writes them (``data.fit_instruction_records``,
cropping to the longest label so that ``classify`` can reproduce the crop); records read from other
files are fitted here, and their count is reported (``n_truncated``). A record that cannot be
fitted (no sequence to crop, or an answer longer than the limit) is an error naming it.
Conditioning dropout (``uncond_share`` p, off by default; Ho & Salimans 2022, "Classifier-Free Diffusion
Guidance", Sec. 3.2, where the condition is set to null with probability p_uncond while training): each time a
generation record is read, with probability p it is shown without its condition, as source ``<s>`` alone and the
same answer (``Seq=<...>`` and ``</s>``), the text the sampler writes for an unconditional sample and the
unconditional branch of classifier-free guidance (``guidance.py``) reads. One model then learns both p(seq | label)
and p(seq), so that guidance contrasts the label with a branch the model was trained on. The draws are seeded by the
training seed, the record's index and how often it was read, so a run repeats exactly. Understanding records are
never changed. Measured on ``benchmarks/protein_generate`` with p = 0.2 (``results_cfgtrain*.md``, the ``small``
model preset, 3 seeds), it did not help these small models: guided or not, their samples passed the length KS test
for fewer families than the plain preset's without it (held-out mean KS p 0.022 with the setting chosen on
validation, guidance 1.5, vs 0.125), and ``bayes`` classification fell (0.42 vs 0.76); so it is off in every preset.

Batches are right-padded; padding is masked out of attention and loss. Default adapter: LoRA r 64 /
alpha 128 on the seven projections, no ``modules_to_save``; the stage-1 merged checkpoint is the
base. Training goes through ``adaptome.core.train.loop.fit`` (see ``pretrain.run_stage``).

Dimension letters: B examples per batch, L the longest example in the batch.
Not covered: multi-turn records, packing several records per row, dropping part of a condition (the whole
instruction and label go together).
"""

from __future__ import annotations

import random
from typing import Any, Callable

from adaptome.domains.protein.formats import FormatError, is_open_field, parse_field, prompt_of, read_instructions
from adaptome.domains.protein.tokenizer import encode

IGNORE = -100


def n_tokens(tok, prompt: str, target: str) -> int:
    """Tokens of ``<s>`` + prompt + target (+ ``</s>`` unless the target is an open field)."""
    return (len(encode(tok, prompt, bos=True)) + len(encode(tok, target, bos=False))
            + (0 if is_open_field(target) else 1))


def crop_to_fit(tok, seq: str, render: Callable[[str], tuple[str, str]], max_seq_length: int) -> str:
    """The longest N-terminal part ``seq[:k]`` whose rendered (prompt, target) fits ``max_seq_length``
    tokens (``n_tokens``); ``seq`` itself when it fits. Raises ``FormatError`` when not one residue fits.

    A binary search over k (token counts grow with k for the character tokenizer and, up to merges at
    the edge, for subword ones; the result is checked).
    """
    if n_tokens(tok, *render(seq)) <= max_seq_length:
        return seq
    lo, hi = 0, len(seq)  # fits(lo) unknown yet, fits(hi) false
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if n_tokens(tok, *render(seq[:mid])) <= max_seq_length:
            lo = mid
        else:
            hi = mid
    while lo > 0 and n_tokens(tok, *render(seq[:lo])) > max_seq_length:
        lo -= 1
    if lo == 0:
        prompt, target = render(seq[:1])
        raise FormatError(f"max_seq_length {max_seq_length} leaves no room for a residue beside "
                          f"{prompt[:60]!r} -> {target[:40]!r}; raise max_seq_length")
    return seq[:lo]


def _seq_of(text: str) -> str | None:
    try:
        return parse_field(text, "Seq")[1]
    except FormatError:
        return None


def fit_record(tok, rec: dict[str, str], max_seq_length: int, where: str = "record") -> tuple[dict[str, str], int]:
    """(record that fits ``max_seq_length`` tokens, residues cropped); see the module docstring."""
    if n_tokens(tok, prompt_of(rec), rec["output"]) <= max_seq_length:
        return rec, 0
    out_seq, in_seq = _seq_of(rec["output"]), _seq_of(rec["input"])
    if out_seq is not None:  # generation record: crop the answer's sequence, leave it open
        kept = crop_to_fit(tok, out_seq, lambda s: (prompt_of(rec), "Seq=<" + s), max_seq_length)
        return {**rec, "output": "Seq=<" + kept}, len(out_seq) - len(kept)
    if in_seq is not None:  # understanding record: crop the prompt's sequence, keep the whole answer
        def render(s: str) -> tuple[str, str]:
            return prompt_of({**rec, "input": f"Seq=<{s}>"}), rec["output"]

        kept = crop_to_fit(tok, in_seq, render, max_seq_length)
        return {**rec, "input": f"Seq=<{kept}>"}, len(in_seq) - len(kept)
    n = n_tokens(tok, prompt_of(rec), rec["output"])
    raise FormatError(f"{where}: {n} tokens > max_seq_length {max_seq_length} and no Seq=<...> to crop; "
                      "its answer would be cut")


def encode_record(tok, rec: dict[str, str], max_seq_length: int) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (-100 over the prompt) of one record that fits (``fit_record``).

    An open answer (a cropped ``Seq=<...`` without ``>``) gets no ``</s>``.
    """
    src = encode(tok, prompt_of(rec), bos=True)
    tgt = encode(tok, rec["output"], bos=False) + ([] if is_open_field(rec["output"]) else [tok.eos_token_id])
    if len(src) + len(tgt) > max_seq_length:
        raise FormatError(f"instruction record of {len(src) + len(tgt)} tokens > max_seq_length {max_seq_length}; "
                          "fit it first (fit_record)")
    return {"input_ids": src + tgt, "labels": [IGNORE] * len(src) + tgt}


def encode_unconditional(tok, rec: dict[str, str]) -> dict[str, list[int]]:
    """A fitted generation record without its condition: source ``<s>`` alone, target its answer (and ``</s>``
    unless the answer is open), as ``encode_record`` encodes the answer."""
    src = encode(tok, "", bos=True)
    tgt = encode(tok, rec["output"], bos=False) + ([] if is_open_field(rec["output"]) else [tok.eos_token_id])
    return {"input_ids": src + tgt, "labels": [IGNORE] * len(src) + tgt}


def _is_generation(rec: dict[str, str]) -> bool:
    """The answer is a sequence: closed ``Seq=<...>``, or open after a crop (``Seq=<MKV...``)."""
    return _seq_of(rec["output"]) is not None or (is_open_field(rec["output"]) and rec["output"].startswith("Seq=<"))


def check_uncond_share(share: float) -> float:
    if not 0.0 <= share < 1.0:
        raise FormatError(f"uncond_share must be in [0, 1) (the chance that a generation record is shown without "
                          f"its condition), got {share}")
    return float(share)


class InstructionDataset:
    """Encoded records, each fitted to ``max_seq_length`` first; ``n_cropped`` records were cropped.

    With ``uncond_share`` p > 0 a generation record is returned without its condition (``encode_unconditional``)
    with probability p at each read; the draw is seeded by ``seed``, the index and the read count (module
    docstring). ``n_generation`` records can be shown so.
    """

    def __init__(self, tok, records: list[dict[str, str]], max_seq_length: int, uncond_share: float = 0.0,
                 seed: int = 0):
        fitted = [fit_record(tok, r, max_seq_length, f"instruction record {i}") for i, r in enumerate(records, 1)]
        self.n_cropped = sum(n > 0 for _, n in fitted)
        self.residues_cropped = sum(n for _, n in fitted)
        self.items = [encode_record(tok, r, max_seq_length) for r, _ in fitted]
        self.uncond_share, self.seed = check_uncond_share(uncond_share), seed
        gen = [i for i, (r, _) in enumerate(fitted) if _is_generation(r)]
        if uncond_share and not gen:
            raise FormatError(f"uncond_share {uncond_share}: none of the {len(fitted)} instruction records is a "
                              "generation record (answer Seq=<...>), so there is no condition to drop")
        self.uncond = {i: encode_unconditional(tok, fitted[i][0]) for i in gen} if uncond_share else {}
        self.n_generation = len(gen)
        self.reads = [0] * len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        if i in self.uncond:
            self.reads[i] += 1
            if random.Random(f"{self.seed}:{i}:{self.reads[i]}").random() < self.uncond_share:
                return self.uncond[i]
        return self.items[i]


def pad_collate(pad_id: int):
    """Right-pad ``input_ids`` with ``pad_id`` and ``labels`` with -100; add ``attention_mask``."""

    def collate(items: list[dict[str, list[int]]]) -> dict:
        import torch

        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), pad_id, dtype=torch.long)  # (B, L)
        labels = torch.full((len(items), n), IGNORE, dtype=torch.long)  # (B, L)
        mask = torch.zeros((len(items), n), dtype=torch.long)  # (B, L)
        for i, it in enumerate(items):
            k = len(it["input_ids"])
            ids[i, :k] = torch.tensor(it["input_ids"])
            labels[i, :k] = torch.tensor(it["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def instruct(files: list[str] | list[dict], model, tok, max_seq_length: int, adapter_method: str,
             adapter_options: dict, train_kwargs: dict, merge: bool = True, overwrite: bool = False,
             uncond_share: float = 0.0, base_model: str | None = None) -> dict[str, Any]:
    """Stage 2 end to end from instruction files (or records already in memory); ``uncond_share``: conditioning
    dropout (module docstring), seeded by ``train_kwargs['seed']``. ``base_model``: the folder ``model`` was
    loaded from; the fingerprints of its training sequences are carried into this stage's
    ``training_data.json`` (``training_data.inherit_fingerprints``)."""
    from adaptome.domains.protein.pretrain import run_stage, tokens_digest
    from adaptome.domains.protein.training_data import inherit_fingerprints, records_summary

    records: list[dict] = []
    for item in files:
        records += [item] if isinstance(item, dict) else read_instructions(item)
    ds = InstructionDataset(tok, records, max_seq_length, uncond_share, int(train_kwargs.get("seed", 0)))
    summary = run_stage(model, tok, ds, pad_collate(tok.pad_token_id), adapter_method, adapter_options,
                        train_kwargs, merge=merge, overwrite=overwrite,
                        training_data=inherit_fingerprints({"stage": "instruct", "max_seq_length": max_seq_length,
                                                            "uncond_share": ds.uncond_share,
                                                            **records_summary(tok, records)}, base_model),
                        data_digest=tokens_digest([it["input_ids"] for it in ds.items],
                                                  [it["labels"] for it in ds.items],
                                                  extra=f"uncond_share={ds.uncond_share}"),
                        base_model=base_model)
    summary["n_records"] = len(records)
    summary["n_truncated"] = ds.n_cropped  # records whose protein was cropped here (never an answer)
    summary["residues_cropped"] = ds.residues_cropped
    summary["uncond_share"], summary["n_generation"] = ds.uncond_share, ds.n_generation
    return summary
