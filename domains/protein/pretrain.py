"""Stage 1: continual causal-LM pretraining on ``Seq=<...>`` lines (ProLLaMA ``run_pt.sh``).

Every protein becomes ``<s>Seq=<MKRV...></s>`` (ProLLaMA sets ``add_eos_token``); the token streams
are concatenated and cut into blocks of ``block_size`` tokens, the remainder dropped (``group_texts``).
With ``max_residues`` a longer protein is cut into windows at a random phase (``data.crop_windows``):
only the window holding the real start opens with ``<s>Seq=<`` and only the one holding the real end
closes with ``></s>``, so a crop never teaches a false end; the label of the first token of every
window is -100 (predicting across the junction of two unrelated windows teaches nothing true);
``whole_windows`` packs without ever splitting a window across two blocks (``window_blocks``). The
loss is otherwise the usual next-token cross-entropy (labels = inputs, shifted inside the model). The
adapter is any registered method applied with ``adaptome.core.adapters.api.apply_adapter``; the
default is LoRA r 128 / alpha 256 on the seven LLaMA projections with ``embed_tokens`` and
``lm_head`` trained fully (``modules_to_save``). Training runs through
``adaptome.core.train.loop.fit``; the adapter is saved to ``<output_dir>/adapter`` and, with
``merge``, a standalone checkpoint to ``<output_dir>/merged``; both folders get a
``training_data.json`` (``training_data.py``: sequence lengths, and the labels of stage 2) that the
sampler reads.

Dimension letters: N blocks, T tokens per block.
Not covered: DeepSpeed, gradient checkpointing, a validation split during training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from adaptome.domains.protein.formats import FormatError, Policy, read_fasta, read_seq_lines, seq_line
from adaptome.domains.protein.tokenizer import encode


def load_sequences(files: list[str], policy: Policy = "error", skipped: list[str] | None = None) -> list[str]:
    """Whole sequences from FASTA, Stockholm or ``Seq=<...>`` text files (by content, a byte-order mark
    ignored; Stockholm also by extension). The records ``"skip"`` drops are added to ``skipped`` (FASTA /
    Stockholm ids, ``path:line`` for text lines); a policy that leaves no sequence is an error."""
    from adaptome.domains.protein.formats import clean_sequence, is_stockholm, read_sequences

    if not files:
        raise FormatError("no training files given")
    seqs: list[str] = []
    dropped: list[str] = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise FormatError(f"{path}: file not found")
        head = path.read_text(encoding="utf-8-sig", errors="replace").lstrip()[:1]  # -sig: an editor's BOM
        if is_stockholm(path):
            seqs += [r.seq for r in read_sequences(path, policy, skipped=dropped)]
        elif head == ">" or not head:
            seqs += [r.seq for r in read_fasta(path, policy, dropped)]
        else:
            for i, s in enumerate(read_seq_lines(path), 1):
                c = clean_sequence(s, policy, f"{path}:{i}")
                if c is not None:
                    seqs.append(c)
                else:
                    dropped.append(f"{path}:{i}")
    if dropped and not seqs:
        raise FormatError(f"{', '.join(map(str, files))}: residue policy {policy!r} left out all {len(dropped)} "
                          "sequences; none left to train on")
    if skipped is not None:
        skipped.extend(dropped)
    return seqs


def sequence_blocks(tok, seqs: list[str], block_size: int) -> list[list[int]]:
    """ProLLaMA's ``group_texts``: ``<s>Seq=<...></s>`` token streams packed into full blocks
    (``core.text.pack_blocks``; fewer tokens than one block is an ``InputError``)."""
    from adaptome.core.text import pack_blocks

    return pack_blocks([encode(tok, seq_line(s)) for s in seqs], block_size, tok.eos_token_id)


def piece_tokens(tok, piece) -> list[int]:
    """Tokens of one ``data.Piece``: ``<s>Seq=<`` only at the real start, ``></s>`` only at the real end.

    Not covered: sub-word tokenizers may split a window's first residues differently from the same
    residues inside the whole protein (the character tokenizer does not)."""
    ids = encode(tok, ("Seq=<" if piece.start else "") + piece.seq + (">" if piece.end else ""), bos=piece.start)
    return ids + ([tok.eos_token_id] if piece.end else [])


def window_blocks(tok, seqs: list[str], block_size: int, max_residues: int | None,
                  seed: int = 0, whole_windows: bool = False) -> tuple[list[list[int]], list[list[int]]]:
    """(blocks, labels): the windows of every protein (``data.crop_windows``, seeded) packed into full
    blocks of ``block_size`` tokens, the remainder dropped; labels equal the tokens except -100 on the
    first token of each window (a junction). Fewer tokens than one block is an ``InputError``.

    ``whole_windows``: a window that does not fit the rest of the current block starts the next block;
    the rest is filled with ``<pad>`` labelled -100 (causal attention: padding after a window cannot
    change what the window's tokens see). So a window is always read with its own ``<s>Seq=<`` when it
    has one, and a protein that fits one window shows the model its start and its end together. A window
    longer than ``block_size`` is an ``InputError`` (raise ``block_size`` or set ``max_residues``)."""
    import random

    from adaptome.core.text import InputError
    from adaptome.domains.protein.data import crop_windows

    rng = random.Random(seed)
    stream: list[int] = []
    target: list[int] = []
    for s in seqs:
        for piece in crop_windows(s, max_residues, rng):
            ids = piece_tokens(tok, piece)
            if whole_windows:
                if len(ids) > block_size:
                    raise InputError(f"a window of {len(ids)} tokens does not fit block_size {block_size} "
                                     "(whole_windows); raise block_size or set max_residues")
                room = block_size - len(stream) % block_size
                if len(ids) > room:
                    stream += [tok.pad_token_id] * room
                    target += [-100] * room
            stream += ids
            target += [-100] + ids[1:]
    if whole_windows and len(stream) % block_size:  # the last block, padded rather than dropped
        room = block_size - len(stream) % block_size
        stream += [tok.pad_token_id] * room
        target += [-100] * room
    n = len(stream) // block_size
    if n == 0:
        raise InputError(f"the data holds {len(stream)} tokens, fewer than one block of {block_size}")
    cut = [(i * block_size, (i + 1) * block_size) for i in range(n)]  # (N, T) once stacked
    return [stream[a:b] for a, b in cut], [target[a:b] for a, b in cut]


class BlockDataset:
    """Map-style dataset of packed blocks: ``{"input_ids": (T,), "labels": (T,)}`` (labels = the
    blocks unless given)."""

    def __init__(self, blocks: list[list[int]], labels: list[list[int]] | None = None):
        import torch

        self.blocks = [torch.tensor(b, dtype=torch.long) for b in blocks]
        self.labels = self.blocks if labels is None else [torch.tensor(b, dtype=torch.long) for b in labels]

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.blocks[i], "labels": self.labels[i]}


def stack_collate(items: list[dict]) -> dict:
    import torch

    return {k: torch.stack([it[k] for it in items]) for k in items[0]}  # (N, T) each


def tokens_digest(*rows: list[list[int]], extra: str = "") -> str:
    """SHA-256 of the token rows a stage trains on (and ``extra``): what its checkpoints must have been trained on
    to be resumed."""
    import hashlib

    h = hashlib.sha256(extra.encode())
    for part in rows:
        for row in part:
            h.update(",".join(map(str, row)).encode() + b";")
        h.update(b"|")
    return h.hexdigest()


def check_resumed_base(out: Path, base: dict[str, Any]) -> None:
    """Refuse, in one line naming both folders, to resume ``out/checkpoints`` when they were trained on other base
    weights than ``base`` holds now (e.g. stage 1 retrained in place since stage 2 stopped)."""
    from adaptome.core.train.checkpoint import STATE_FILE, list_checkpoints
    from adaptome.domains.protein.formats import ProteinError

    found = list_checkpoints(out / "checkpoints")
    if not found:
        return
    try:
        ident = json.loads((found[-1][1] / STATE_FILE).read_text(encoding="utf-8")).get("identity") or {}
    except (OSError, ValueError):  # a corrupt state is core's to name
        return
    old = ident.get("protein_stage.base_weights")
    if old and old != base["weights_digest"]:
        name = base["path"] or "the base model"
        raise ProteinError(f"{name}: holds other weights than when {out / 'checkpoints'} were trained on it (retrained "
                           "in place since?); resuming would continue on another base: pass --overwrite to train "
                           "this stage again on it, or give the base it was trained on")


def run_stage(model, tok, dataset, collate_fn: Callable, adapter_method: str, adapter_options: dict[str, Any],
              train_kwargs: dict[str, Any], merge: bool = True, eval_fn: Callable | None = None,
              overwrite: bool = False, optimizer_name: str = "adamw",
              optimizer_options: dict[str, Any] | None = None,
              training_data: dict[str, Any] | None = None, data_digest: str | None = None,
              base_model: str | None = None) -> dict[str, Any]:
    """Apply the adapter, train with ``fit``, save adapter (+ merged checkpoint); a summary dict.

    Outputs under ``train_kwargs['output_dir']``: ``metrics.jsonl``, ``checkpoints/``,
    ``adapter/``, ``merged/``. Existing ``adapter/`` or ``merged/`` folders are never replaced
    unless ``overwrite``. ``adapter_method`` may also be a from-scratch method (``sltrain``: the whole
    model trains and is saved to ``adapter/``; with ``merge`` a dense copy, each SLTrain layer materialized as
    W = s·BA + S, goes to ``merged/``, an ordinary checkpoint that stage 2 loads); ``optimizer_name`` / ``_options``
    pick a ``core.optim.registry.OPTIMIZERS`` entry (``galore``). ``training_data`` (see
    ``training_data.py``) is written as ``training_data.json`` into ``adapter/`` and ``merged/``, with
    ``base_model``: the folder (absolute) or hub id ``model`` was loaded from and its ``weights_digest``.

    What the stage trained on is part of the run's identity (``core.train.identity``): ``data_digest`` (the caller's
    digest of the examples) and the base's ``weights_digest``, so a resume on other data of the same size, or on a
    base retrained in place since, is refused, a changed base in one line naming both folders
    (``check_resumed_base``). With ``overwrite`` the stage starts again: an earlier run's ``checkpoints/`` are
    removed first (they were resumed, a finished run writing its old model again, or refused as another
    configuration's).
    """
    from adaptome.core.adapters.api import trainable_report
    from adaptome.core.adapters.from_scratch import apply_method, save_standalone, save_trained
    from adaptome.core.generic_train import recorded_base
    from adaptome.core.optim.registry import make_optimizer_factory
    from adaptome.core.train.identity import weights_digest
    from adaptome.core.train.loop import fit
    from adaptome.domains.protein.training_data import write_training_data

    out = Path(train_kwargs["output_dir"])
    for sub in ("adapter", "merged"):
        if (out / sub).exists() and not overwrite:
            raise FileExistsError(f"{out / sub}: already exists; pass --overwrite to replace it")
    base = {"path": recorded_base(base_model) if base_model else None, "weights_digest": weights_digest(model)}
    if base_model and not overwrite:  # a model built from config (seeded) is named by core's check (train.seed)
        check_resumed_base(out, base)
    make_optimizer = make_optimizer_factory(optimizer_name, optimizer_options, train_kwargs.get("lr", 1e-3),
                                            train_kwargs.get("weight_decay", 0.0),
                                            train_kwargs.get("betas", (0.9, 0.999)))
    model, _, from_scratch = apply_method(model, adapter_method, adapter_options)
    report = trainable_report(model)
    identity = {"protein_stage": {"data_sha256": data_digest, "base_weights": base["weights_digest"]}}
    # overwrite: fit removes an earlier run's checkpoints once its own checks passed, and starts again
    result = fit(model, dataset, collate_fn=collate_fn, eval_fn=eval_fn, make_optimizer=make_optimizer,
                 identity=identity, start_again=overwrite, **train_kwargs)
    model = result.model
    model.eval()
    save_trained(model, out / "adapter", overwrite=overwrite)
    summary: dict[str, Any] = {"adapter": str(out / "adapter"), "steps": result.step, "trainable": report,
                               "history": result.history}
    if training_data is not None:
        training_data = {**training_data, "base_model": base}
        write_training_data(out / "adapter", training_data)
    if merge:  # a from-scratch model (SLTrain) is written with its layers made dense, so stage 2 can load it
        save_standalone(model, out / "merged", tokenizer=tok, overwrite=overwrite)
        summary["merged"] = str(out / "merged")
        if training_data is not None:
            write_training_data(out / "merged", training_data)
    losses = [h["loss"] for h in result.history if "loss" in h]
    if result.first_loss is not None:  # step 1's and the last step's, also after a resume (fit keeps them)
        summary["first_loss"], summary["last_loss"] = result.first_loss, result.last_loss
    elif losses:  # a checkpoint of a version that kept none: this call's logging windows
        summary["first_loss"], summary["last_loss"] = losses[0], losses[-1]
    summary["model"] = model
    return summary


def pretrain(files: list[str], model, tok, block_size: int, adapter_method: str, adapter_options: dict,
             train_kwargs: dict, residue_policy: Policy = "error", max_residues: int | None = None,
             merge: bool = True, overwrite: bool = False, optimizer_name: str = "adamw",
             optimizer_options: dict[str, Any] | None = None, whole_windows: bool = False,
             base_model: str | None = None) -> dict[str, Any]:
    """Stage 1 end to end from sequence files; see the module docstring. The windows are seeded by
    ``train_kwargs['seed']``; ``whole_windows`` as ``window_blocks``."""
    from adaptome.domains.protein.training_data import sequences_summary

    skipped: list[str] = []
    seqs = load_sequences(files, residue_policy, skipped)
    blocks, labels = window_blocks(tok, seqs, block_size, max_residues, train_kwargs.get("seed", 0), whole_windows)
    summary = run_stage(model, tok, BlockDataset(blocks, labels), stack_collate, adapter_method, adapter_options,
                        train_kwargs, merge=merge, overwrite=overwrite, optimizer_name=optimizer_name,
                        optimizer_options=optimizer_options,
                        training_data={"stage": "pretrain", **sequences_summary(tok, seqs)},
                        data_digest=tokens_digest(blocks, labels), base_model=base_model)
    summary.update(n_sequences=len(seqs), n_blocks=len(blocks), skipped=skipped)
    return summary
