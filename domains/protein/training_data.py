"""What a model was trained on, saved beside its weights as ``training_data.json``.

Both stages write it into ``adapter/`` and ``merged/`` (``pretrain.run_stage``):

* ``sequence_lengths``: residues per training sequence (n, min, median, p95, max) and
  ``max_sequence_tokens``, the longest ``Seq=<...>`` line in the model's own tokens; the sampler
  derives its default length limit from it;
* ``labels`` (stage 2): ``{key: {label: count}}`` of every ``Key=<label>`` field of the instruction
  records (``Family``, ``Superfamily``, ``EC``...); ``sample`` refuses a label the model never saw;
* ``max_seq_length`` (stage 2): the token limit its instruction records were fitted to; ``classify``
  crops its queries to it unless told otherwise;
* ``uncond_share`` (stage 2): the conditioning dropout it was trained with (``instruct.py``); ``sample --guidance``
  notes a model trained without it;
* ``label_lengths`` (stage 2): ``{key: {label: [residues, ...]}}``, the length of every whole
  (closed ``Seq=<...>``) answer of a generation record, by its label; the sampler's ``length_prior``
  option draws sample lengths from it. A cropped (open) answer is not a length and is left out;
* ``sequence_sha1`` (both stages): a fingerprint of every training sequence as the model read it, the
  sorted distinct ``"<residues>:<first 12 hex digits of SHA-1 of the residues>"`` (``fingerprint``), a
  crop (stage 2's open answers, cropped inputs) by its own residues; stage 2 adds its base model's
  (``inherit_fingerprints``), so a stage-2 folder covers stage 1's sequences too. ``evaluate`` counts
  the reference sequences it would call held out that the model was trained on (``trained_on``): a
  sequence whose N-terminal part of one of the recorded lengths has a recorded fingerprint.

A model without the file (a hub checkpoint, an older run) is sampled with the documented limits and
an explicit note that its labels cannot be checked. Not covered: inheriting the rest of the stage-1 file
into the stage-2 folder (stage 2's lengths and labels are those of its own records; only the fingerprints
are carried over).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from adaptome.domains.protein.formats import FormatError, LabelError, is_open_field, parse_field, seq_line

FILE = "training_data.json"


def _lengths(lengths: list[int]) -> dict[str, float]:
    v = sorted(lengths)

    def q(p: float) -> int:  # nearest-rank quantile
        return v[max(0, math.ceil(p * len(v)) - 1)]

    return {"n": len(v), "min": v[0], "median": q(0.5), "p95": q(0.95), "max": v[-1]}


def sequences_summary(tok, seqs: Iterable[str]) -> dict[str, Any]:
    """Length statistics of the training sequences, in residues and in the model's tokens, and their
    fingerprints (``sequence_sha1``)."""
    seqs = [s for s in seqs if s]
    if not seqs:
        return {}
    ids = tok([seq_line(s) for s in seqs], add_special_tokens=False)["input_ids"]
    return {"sequence_lengths": _lengths([len(s) for s in seqs]), "max_sequence_tokens": max(map(len, ids)),
            "sequence_sha1": fingerprint(seqs)}


def _sha1(seq: str) -> str:
    return hashlib.sha1(seq.encode("ascii", "replace")).hexdigest()[:12]


def fingerprint(seqs: Iterable[str]) -> list[str]:
    """``sequence_sha1`` of ``seqs`` (cleaned residues): sorted distinct ``"<length>:<sha1[:12]>"``."""
    return sorted({f"{len(s)}:{_sha1(s)}" for s in seqs if s})


def trained_on(seqs: Iterable[str], prints: Iterable[str]) -> list[bool]:
    """Per sequence: whether it, or its N-terminal part of a length ``prints`` records (a crop the model
    read), has a fingerprint in ``prints`` (``fingerprint``)."""
    known = set(prints)
    lengths = sorted({int(p.split(":", 1)[0]) for p in known})
    return [any(f"{n}:{_sha1(s[:n])}" in known for n in lengths if n <= len(s)) for s in seqs]


def inherit_fingerprints(info: dict[str, Any], base: str | Path | None) -> dict[str, Any]:
    """``info`` with the ``sequence_sha1`` of the ``base`` model folder's record (stage 2's stage-1 model)
    added to its own (a hub id or a folder without a record adds nothing)."""
    base_info = read_training_data(base) if base else None
    extra = (base_info or {}).get("sequence_sha1") or []
    if extra:
        info = {**info, "sequence_sha1": sorted(set(info.get("sequence_sha1", [])) | set(extra))}
    return info


def records_summary(tok, records: Iterable[dict[str, str]]) -> dict[str, Any]:
    """Labels (``{key: {label: count}}``), sequence lengths and fingerprints (``sequence_sha1``, whole and
    cropped sequences alike) of instruction records."""
    labels: dict[str, Counter] = {}
    lengths: dict[str, dict[str, list[int]]] = {}
    seqs: list[str] = []
    crops: list[str] = []
    for rec in records:
        fields = []
        for part in (rec.get("input", ""), rec.get("output", "")):
            try:
                key, value = parse_field(part)
            except FormatError:
                fields.append(None)
                if is_open_field(part) and part.strip().startswith("Seq=<"):
                    crops.append(part.strip()[len("Seq=<"):])
                continue  # free text, or an open (cropped) Seq=<... answer
            fields.append((key, value))
            if key == "Seq":
                seqs.append(value)
            else:
                labels.setdefault(key, Counter())[value] += 1
        cond, answer = fields
        if cond and answer and cond[0] != "Seq" and answer[0] == "Seq":  # a generation record, answer whole
            lengths.setdefault(cond[0], {}).setdefault(cond[1], []).append(len(answer[1]))
    out = {"labels": {k: dict(sorted(c.items())) for k, c in sorted(labels.items())},
           "label_lengths": {k: {lab: sorted(v) for lab, v in sorted(d.items())} for k, d in sorted(lengths.items())}}
    out.update(sequences_summary(tok, seqs))
    out["sequence_sha1"] = fingerprint(seqs + crops)
    return out


def write_training_data(folder: str | Path, info: dict[str, Any]) -> Path:
    from adaptome.core.atomic import write_text_atomic

    return write_text_atomic(Path(folder) / FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_training_data(model: str | Path) -> dict[str, Any] | None:
    """The saved record of a model folder, or None (a hub id, or a folder without one)."""
    path = Path(model) / FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise FormatError(f"{path}: expected a JSON object")
    return info


def check_labels(labels: Iterable[str | None], key: str, info: dict[str, Any] | None, model: str,
                 allow_unseen: bool = False) -> list[str]:
    """Refuse (``LabelError``) a requested label that the model's training records never held under
    ``key``; returns notes to print (the check that could not run, or labels forced through)."""
    wanted = sorted({lab for lab in labels if lab is not None})
    if not wanted:
        return []
    if info is None:
        return [f"{model} has no {FILE}: cannot check that it was trained on {key}=<...> labels"]
    seen = info.get("labels", {}).get(key, {})
    unseen = [lab for lab in wanted if lab not in seen]
    if not unseen:
        return []
    known = ", ".join(sorted(seen)[:20]) + (" ..." if len(seen) > 20 else "") if seen else f"no {key} labels at all"
    msg = (f"{len(unseen)} label(s) never seen in the training of {model}, e.g. {key}=<{unseen[0]}> "
           f"(trained on: {known})")
    if not allow_unseen:
        raise LabelError(msg + "; pass --allow-unseen-labels to sample anyway")
    return [msg + "; sampling anyway (--allow-unseen-labels)"]
