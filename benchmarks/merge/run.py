"""Merging three task LoRAs: how much of each task's held-out gain survives, per merge method.

Question: merged to the rank of one input LoRA, does LoRA-LEGO retain more of each task than the
linear and TIES merges at that rank?

Setup (CPU, about ten minutes): a tiny LLaMA over the character tokenizer is first trained fully on
core's shipped English example text, the "base model" (it has never seen the three task languages).
Three task LoRAs (peft, rank 8 on the attention and MLP linears) are trained from it through
``adaptome.core.train.loop.fit`` on three languages of the shipped MasakhaNER news text
(``domains/multilingual/data/text``: Hausa, Swahili, Yoruba; Yoruba's tone marks and dots below are
dropped by NFKD so that the ASCII tokenizer sees its letters). Each language's last 200 lines are
held out. The LoRAs are merged with ``adaptome.core.merge.api.merge_adapters`` and loaded with
plain peft. Score on a task: the gain in token NLL over the base on the task's HELD-OUT blocks,
NLL_base - NLL_model. Retained share of task t: gain(merged, t) / gain(single LoRA t, t). Three
seeds (LoRA init, data order, k-means, DARE's drop); the base is the same for all.

Usage: python benchmarks/merge/run.py [--steps 300] [--seeds 3]
Writes benchmarks/merge/results.json and results.md (report.py writes the text).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from importlib.metadata import version
from pathlib import Path

import torch

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from report import MERGES, RANK, TASKS, write_md  # noqa: E402

BLOCK = 128
HELD_OUT_LINES = 200


def ascii_text(line: str) -> str:
    """NFKD, then drop combining marks (Yoruba tone marks, dots below); other letters stay as they are."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", line) if not unicodedata.combining(ch))


def blocks(tok, lines: list[str]) -> list[dict]:
    from adaptome.core.text import pack_blocks

    ids = [tok(ascii_text(s), add_special_tokens=False)["input_ids"] for s in lines]
    return [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)}
            for b in pack_blocks(ids, BLOCK, tok.eos_token_id)]


def collate(batch):
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}  # (B, T)


@torch.no_grad()
def nll(model, examples, batch: int = 64) -> float:
    """Mean next-token NLL (nats) over all predicted tokens of ``examples``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch):
        b = collate(examples[i:i + batch])
        logits = model(input_ids=b["input_ids"]).logits[:, :-1]  # (B, T-1, V)
        labels = b["labels"][:, 1:]  # (B, T-1)
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                         reduction="sum"))
        count += labels.numel()
    return total / count


def data(tok):
    from adaptome.core.text import example_text_files, read_texts

    train, test = {}, {}
    for t in TASKS:
        lines = (ROOT / "domains" / "multilingual" / "data" / "text" / f"{t}.txt").read_text(
            encoding="utf-8").splitlines()
        lines = [s for s in lines if s.strip()]
        train[t], test[t] = blocks(tok, lines[:-HELD_OUT_LINES]), blocks(tok, lines[-HELD_OUT_LINES:])
    generic = blocks(tok, read_texts(example_text_files()[0]))
    unk = {t: float(sum((b["input_ids"] == tok.unk_token_id).sum() for b in train[t])) / (len(train[t]) * BLOCK)
           for t in TASKS}
    return train, test, generic, unk


def clusters(paths: list[Path], seed: int) -> dict:
    """How LEGO's k-means at k = RANK groups the units: share of clusters (and of units) mixing inputs,
    and the mean ratio ||centroid|| / mean ||member|| of the clusters with more than one member."""
    import numpy as np

    from adaptome.core.merge import lego
    from adaptome.core.merge.factors import modules, read_lora

    loras = [read_lora(p) for p in paths]
    n_clusters = n_mixed = n_units = n_mixed_units = 0
    ratios = []
    for m in modules(loras):
        source = np.concatenate([np.full(lo.factors[m][1].shape[0], i) for i, lo in enumerate(loras)])  # (n,)
        u, order = lego.canonical_order(lego.units(loras, m).numpy(), True)
        cent, labels = lego.cluster(u, RANK, lego.LegoConfig(seed=seed))
        for j in range(len(cent)):
            members = labels == j
            mixed = len(set(source[order][members].tolist())) > 1
            n_clusters += 1
            n_mixed += mixed
            n_units += int(members.sum())
            n_mixed_units += int(members.sum()) if mixed else 0
            if members.sum() > 1:
                ratios.append(float(np.linalg.norm(cent[j]) / np.linalg.norm(u[members], axis=1).mean()))
    return {"mixed_cluster_share": n_mixed / n_clusters, "units_in_mixed_clusters": n_mixed_units / n_units,
            "centroid_norm_ratio": float(np.mean(ratios))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--base-steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    t0 = time.time()
    import peft

    from adaptome.core import text
    from adaptome.core.adapters.api import apply_adapter, make_config
    from adaptome.core.adapters.io import save_adapter
    from adaptome.core.merge.api import merge_adapters
    from adaptome.core.train.loop import fit

    tok = text.char_tokenizer()
    task_train, task_test, generic, unk = data(tok)
    print({t: (len(task_train[t]), len(task_test[t])) for t in TASKS}, "generic", len(generic), "unk", unk, flush=True)
    torch.manual_seed(0)
    base = text.tiny_causal_lm(len(tok), hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fit(base, generic, collate_fn=collate, output_dir=tmp / "base-run", max_steps=args.base_steps, batch_size=16,
            lr=3e-3, progress=False, log_every=0, seed=0)
        base.eval()
        base_held = {t: nll(base, task_test[t]) for t in TASKS}
        print(f"base trained ({time.time() - t0:.0f} s): held-out NLL {base_held}", flush=True)
        for seed in range(args.seeds):
            paths = {}
            for t in TASKS:
                model = apply_adapter(copy.deepcopy(base), make_config("lora", {
                    "r": RANK, "lora_alpha": 2 * RANK, "target_modules": "attention+mlp"}))
                torch.manual_seed(seed)
                fit(model, task_train[t], collate_fn=collate, output_dir=tmp / f"s{seed}-{t}", max_steps=args.steps,
                    batch_size=16, lr=5e-3, progress=False, log_every=0, seed=seed)
                paths[t] = save_adapter(model, tmp / f"s{seed}-{t}" / "adapter")
                held = {u: nll(model, task_test[u]) for u in TASKS}
                rows.append({"seed": seed, "merge": f"single {t}", **{f"nll/{u}": held[u] for u in TASKS}})
                print(f"seed {seed} {t} LoRA ({time.time() - t0:.0f} s): held-out NLL "
                      f"{ {u: round(v, 3) for u, v in held.items()} }", flush=True)
            rows.append({"seed": seed, "merge": "lego clusters", **clusters([paths[t] for t in TASKS], seed)})
            single = {t: next(r for r in rows if r["seed"] == seed and r["merge"] == f"single {t}")[f"nll/{t}"]
                      for t in TASKS}
            for label, method, rank, opts in MERGES:
                out = tmp / f"s{seed}-{method}-{len(rows)}"
                opts = dict(opts, seed=seed) if method in ("lego", "dare") else opts
                summary = merge_adapters([paths[t] for t in TASKS], method, out, rank=rank, **opts)
                merged = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out))
                scores = {u: nll(merged, task_test[u]) for u in TASKS}
                retained = {u: (base_held[u] - scores[u]) / (base_held[u] - single[u]) for u in TASKS}
                rows.append({"seed": seed, "merge": label, **{f"nll/{u}": scores[u] for u in TASKS},
                             **{f"retained/{u}": retained[u] for u in TASKS},
                             "retained_mean": statistics.mean(retained.values()),
                             "distance_to_sum": summary["relative_distance_to_weighted_sum"]})
                print(label, seed, {u: round(v, 3) for u, v in retained.items()}, flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    command = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/merge/run.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v != ap.get_default(k))
    res = {"command": command, "args": vars(args), "commit": commit,
           "platform": platform.platform(), "seconds": time.time() - t0, "cpu_seconds": time.process_time(),
           "versions": {p: version(p) for p in ("torch", "peft", "transformers", "scikit-learn")},
           "blocks": {t: {"train": len(task_train[t]), "held_out": len(task_test[t])} for t in TASKS},
           "generic_blocks": len(generic), "unk_share": unk, "base_heldout_nll": base_held, "rows": rows}
    (HERE / "results.json").write_text(json.dumps(res, indent=2))
    (HERE / "results.md").write_text(write_md(res))
    print(f"wrote {HERE / 'results.md'}")


if __name__ == "__main__":
    main()
