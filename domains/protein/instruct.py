"""Stage 2: instruction tuning on ``{instruction, input, output}`` records (ProLLaMA ``run_it.sh``,
``build_instruction_dataset.py``).

Each record becomes source = ``<s>`` + ``instruction + ' ' + input`` and target = ``output`` +
``</s>``, concatenated with no separator and truncated to ``max_seq_length`` tokens. Labels are -100
on every source token, so the loss covers only the answer and its EOS (the "prompt mask").
Batches are right-padded; padding is masked out of attention and loss. Default adapter: LoRA r 64 /
alpha 128 on the seven projections, no ``modules_to_save``; the stage-1 merged checkpoint is the
base. Training goes through ``adaptome.core.train.loop.fit`` (see ``pretrain.run_stage``).

Dimension letters: B examples per batch, L the longest example in the batch.
Not covered: multi-turn records, packing several records per row.
"""

from __future__ import annotations

from typing import Any

from adaptome.domains.protein.formats import prompt_of, read_instructions
from adaptome.domains.protein.tokenizer import encode

IGNORE = -100


def encode_record(tok, rec: dict[str, str], max_seq_length: int) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (-100 over the prompt) of one record."""
    src = encode(tok, prompt_of(rec), bos=True)
    tgt = encode(tok, rec["output"], bos=False) + [tok.eos_token_id]
    ids = (src + tgt)[:max_seq_length]
    labels = ([IGNORE] * len(src) + tgt)[:max_seq_length]
    return {"input_ids": ids, "labels": labels}


class InstructionDataset:
    def __init__(self, tok, records: list[dict[str, str]], max_seq_length: int):
        self.items = [encode_record(tok, r, max_seq_length) for r in records]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
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
             adapter_options: dict, train_kwargs: dict, merge: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Stage 2 end to end from instruction files (or records already in memory)."""
    from adaptome.domains.protein.pretrain import run_stage
    from adaptome.domains.protein.training_data import records_summary

    records: list[dict] = []
    for item in files:
        records += [item] if isinstance(item, dict) else read_instructions(item)
    ds = InstructionDataset(tok, records, max_seq_length)
    summary = run_stage(model, tok, ds, pad_collate(tok.pad_token_id), adapter_method, adapter_options,
                        train_kwargs, merge=merge, overwrite=overwrite,
                        training_data={"stage": "instruct", **records_summary(tok, records)})
    summary["n_records"] = len(records)
    summary["n_truncated"] = sum(it["labels"][-1] != tok.eos_token_id for it in ds.items)
    return summary
