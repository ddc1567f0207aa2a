"""Merging three task LoRAs: how much of each task's held-out gain survives, per merge method.

Question: merged to the rank of one input LoRA, does LoRA-LEGO retain more of each task than the
linear and TIES merges at that rank?

Setup (CPU, about ten minutes): a tiny LLaMA over the character tokenizer is first trained fully on
core's shipped English example text, the "base model" (it has never seen the three task languages).
Three task LoRAs (peft, rank 8 on the attention and MLP linears) are trained from it through
``adaptome.core.train.loop.fit`` on three languages of the shipped MasakhaNER news text
(``domains/multilingual/data/text``: Hausa, Swahili, Yoruba; Yoruba's tone marks and dots below are
dropped by NFKD so that the ASCII tokenizer sees its letters). Each language's last 200 lines are
held out (the test split), the 200 lines before them are the validation split (for any choice
between merge variants), the rest is training data. The LoRAs are merged with
``adaptome.core.merge.api.merge_adapters`` and loaded with plain peft. Score on a task: the gain in
token NLL over the base on the task's held-out blocks, NLL_base - NLL_model. Retained share of task
t: gain(merged, t) / gain(single LoRA t, t), on the validation and on the test split. Three seeds
(LoRA init, data order, k-means, DARE's drop); the base is the same for all.

Second setting (``--setting proteins``, ``proteins.py``): three protein families (the shipped Cyclin_N Pfam
seed, serine/threonine kinases and beta-lactamases from nrPDB-EC) as the tasks, a tiny LLaMA trained on the
other shipped protein sequences as the base, held-out sequences of each family as its validation and test
splits; the same merges, scores and report (``report.py`` puts both settings side by side in results.md,
averaging retention over the tasks whose own LoRA gains more than ``report.MIN_GAIN`` on validation).

The trained base and task LoRAs are cached under ``--cache`` (``cache.py``: keyed by a hash of every
setting, the training data's token ids and the package versions), so a second run only merges and
evaluates (minutes); results record which models came from the cache.

Usage: python benchmarks/merge/run.py [--setting languages|proteins] [--steps 300 | --epochs E] [--lora-lr LR]
    [--seeds 3] [--cache DIR] [--train-only]
Writes benchmarks/merge/results.json (languages) or results_proteins.json, and results.md from both.
The protein setting's numbers in results.md come from
``--setting proteins --epochs 20 --lora-lr 0.002`` (chosen on validation, protein_sweep.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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
import cache  # noqa: E402
from report import MERGES, RANK, TASKS, write_md_all  # noqa: E402

BLOCK = 128
MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128}
HELD_OUT_LINES = 200
VAL_LINES = 200
LORA_LR = 5e-3
BASE_LR = 3e-3
BATCH = 16


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

    train, val, test = {}, {}, {}
    for t in TASKS:
        lines = (ROOT / "domains" / "multilingual" / "data" / "text" / f"{t}.txt").read_text(
            encoding="utf-8").splitlines()
        lines = [s for s in lines if s.strip()]
        cut = -HELD_OUT_LINES - VAL_LINES
        train[t], val[t], test[t] = (blocks(tok, lines[:cut]), blocks(tok, lines[cut:-HELD_OUT_LINES]),
                                     blocks(tok, lines[-HELD_OUT_LINES:]))
    generic = blocks(tok, read_texts(example_text_files()[0]))
    unk = {t: float(sum((b["input_ids"] == tok.unk_token_id).sum() for b in train[t])) / (len(train[t]) * BLOCK)
           for t in TASKS}
    return train, val, test, generic, unk


def clusters(paths: list[Path], seed: int, basis: str, cluster_on: str) -> dict:
    """How LEGO's k-means at k = RANK groups the units: share of clusters (and of units) mixing inputs, and over
    the clusters with more than one member the mean ratio ||centroid|| / mean ||member|| and the mean cosine
    between the paper's centroid's rank-1 update (mean b)(mean a)^T and the members' mean update (1/m) sum b_i a_i^T
    (how far the cross terms turn it; also over the clusters mixing inputs), and the share of the members' mean
    update's squared norm that its best rank-1 approximation keeps (s_1^2 / ||.||^2: what any one rank can hold)
    and that approximation's cosine to it (s_1 / ||.||)."""
    import numpy as np

    from adaptome.core.merge import lego
    from adaptome.core.merge.factors import modules, read_lora

    loras = [read_lora(p) for p in paths]
    n_clusters = n_mixed = n_units = n_mixed_units = 0
    ratios, cosines, mixed_cosines, kept, kept_cos = [], [], [], [], []
    for m in modules(loras):
        source = np.concatenate([np.full(lo.factors[m][1].shape[0], i) for i, lo in enumerate(loras)])  # (n,)
        u, order = lego.canonical_order(lego.units(loras, m, basis).numpy(), True)
        cfg = lego.LegoConfig(seed=seed, basis=basis, cluster_on=cluster_on,
                              centroid="update" if cluster_on == "updates" else "factors")
        n_out = loras[0].factors[m][0].shape[0]
        cent, labels = lego.cluster(u, RANK, cfg, n_out=n_out)
        for j in range(len(cent)):
            members = labels == j
            mixed = len(set(source[order][members].tolist())) > 1
            n_clusters += 1
            n_mixed += mixed
            n_units += int(members.sum())
            n_mixed_units += int(members.sum()) if mixed else 0
            if members.sum() > 1:
                ratios.append(float(np.linalg.norm(cent[j]) / np.linalg.norm(u[members], axis=1).mean()))
                b, a = u[members, :n_out], u[members, n_out:]  # (m, O), (m, I)
                cb, ca = cent[j, :n_out], cent[j, n_out:]  # (O,), (I,)
                inner = float((b @ cb) @ (a @ ca))  # <cb ca^T, sum_i b_i a_i^T>: (m,) . (m,)
                mean_sq = float(((b @ b.T) * (a @ a.T)).sum())  # ||sum_i b_i a_i^T||^2: (m, m) * (m, m)
                cos = inner / (np.linalg.norm(cb) * np.linalg.norm(ca) * mean_sq ** 0.5)
                cosines.append(cos)
                kept.append(lego.top_pair(b.T, a)[0] ** 2 / mean_sq)  # (O, m) @ (m, I): the 1/m cancels
                kept_cos.append(kept[-1] ** 0.5)
                if mixed:
                    mixed_cosines.append(cos)
    return {"mixed_cluster_share": n_mixed / n_clusters, "units_in_mixed_clusters": n_mixed_units / n_units,
            "centroid_norm_ratio": float(np.mean(ratios)), "centroid_update_cos": float(np.mean(cosines)),
            "centroid_update_cos_mixed": float(np.mean(mixed_cosines)) if mixed_cosines else float("nan"),
            "rank_one_share": float(np.mean(kept)), "rank_one_cos": float(np.mean(kept_cos))}


def peft_factorwise(base, inputs: list[Path], weights: list[float], out: Path, combination: str = "linear",
                    density: float | None = None) -> Path:
    """peft's own factor-wise merge of equal-rank LoRAs (``add_weighted_adapter(combination_type="linear")`` or
    ``"ties"``: the A's and the B's merged separately, each weighted by sqrt(w_i s_i), so the product has cross
    terms B_i A_j), saved as a peft folder; returns the folder that holds the merged adapter."""
    import peft

    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(inputs[0]), adapter_name="in0")
    for i, path in enumerate(inputs[1:], 1):
        model.load_adapter(str(path), adapter_name=f"in{i}")
    model.add_weighted_adapter([f"in{i}" for i in range(len(inputs))], list(weights), "merged",
                               combination_type=combination, **({"density": density} if density else {}))
    model.save_pretrained(str(out), selected_adapters=["merged"])
    return out / "merged"


def distance_to_sum(inputs: list[Path], merged: Path, weights: list[float]) -> float:
    """||G - sum_t w_t D_t|| / ||sum_t w_t D_t|| over all modules (Frobenius), as merge_adapters reports it."""
    from adaptome.core.merge.factors import modules, read_lora
    from adaptome.core.merge.linear import weighted_delta

    loras, out = [read_lora(p) for p in inputs], read_lora(merged)
    num = den = 0.0
    for m in modules(loras):
        target = weighted_delta(loras, m, weights)  # (O, I)
        num += float(((out.delta(m) - target) ** 2).sum())
        den += float((target ** 2).sum())
    return (num / den) ** 0.5


def geometry(inputs: list[Path], merged: Path) -> dict:
    """The merged update G against the inputs' updates D_t, Frobenius over all modules: ||G|| / ||mean_t D_t||,
    cos(G, mean_t D_t), and the mean over tasks of <G, D_t> / ||D_t||^2 (how much of each task's own update
    the merge carries: 1 for the sum of mutually orthogonal updates, 1/3 for their mean)."""
    from adaptome.core.merge.factors import modules, read_lora

    loras, out = [read_lora(p) for p in inputs], read_lora(merged)
    gg = gm = mm = 0.0
    along = [0.0] * len(loras)
    own = [0.0] * len(loras)
    for m in modules(loras):
        g = out.delta(m)  # (O, I)
        deltas = [lo.delta(m) for lo in loras]
        mean = sum(deltas) / len(deltas)
        gg, gm, mm = gg + float((g * g).sum()), gm + float((g * mean).sum()), mm + float((mean * mean).sum())
        for i, d in enumerate(deltas):
            along[i] += float((g * d).sum())
            own[i] += float((d * d).sum())
    return {"norm_to_mean": (gg / mm) ** 0.5, "cos_to_mean": gm / (gg * mm) ** 0.5,
            "along_own": statistics.mean(a / o for a, o in zip(along, own))}


def train_base(args, generic, vocab: int, cache_dir: Path, tmp: Path):
    """The base model (trained, or read from the cache) and whether it came from the cache."""
    from safetensors.torch import load_file, save_file

    from adaptome.core import text
    from adaptome.core.atomic import atomic_dir
    from adaptome.core.train.loop import fit

    settings = {"kind": "base", "model": MODEL, "vocab": vocab, "steps": args.base_steps, "batch": BATCH,
                "lr": BASE_LR, "seed": 0, "data": cache.data_digest(generic)}
    where = cache.entry(cache_dir, "base", settings)
    torch.manual_seed(0)
    base = text.tiny_causal_lm(vocab, **MODEL)
    if (where / "model.safetensors").is_file():
        base.load_state_dict(load_file(str(where / "model.safetensors")))
        return base.eval(), where, True
    fit(base, generic, collate_fn=collate, output_dir=tmp / "base-run", max_steps=args.base_steps, batch_size=BATCH,
        lr=BASE_LR, progress=False, log_every=0, seed=0)
    with atomic_dir(where, overwrite=True) as d:
        save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(d / "model.safetensors"))
        (d / "settings.json").write_text(json.dumps(settings, indent=2))
    return base.eval(), where, False


def lora_steps(args, n_examples: int) -> int:
    """A task LoRA's training steps: ``--steps``, or with ``--epochs`` ceil(epochs * examples / batch)."""
    return math.ceil(args.epochs * n_examples / BATCH) if getattr(args, "epochs", None) else args.steps


def train_lora(args, base, base_where: Path, task: str, seed: int, examples, cache_dir: Path, tmp: Path,
               tasks: list[str] = TASKS):
    """(the task LoRA's peft folder, whether it came from the cache); ``tasks`` (the setting's) number the inits."""
    from adaptome.core.adapters.api import apply_adapter, make_config
    from adaptome.core.adapters.io import save_adapter
    from adaptome.core.train.loop import fit

    lora = {"r": RANK, "lora_alpha": 2 * RANK, "target_modules": "attention+mlp"}
    steps = lora_steps(args, len(examples))
    init_seed = 1000 * seed + tasks.index(task)  # independent inits per task, as for LoRAs trained apart
    settings = {"kind": "lora", "base": base_where.name, "task": task, "seed": seed, "init_seed": init_seed,
                "lora": lora, "steps": steps, "batch": BATCH, "lr": args.lora_lr, "data": cache.data_digest(examples)}
    where = cache.entry(cache_dir, f"lora-{task}-s{seed}", settings)
    if (where / "adapter" / "adapter_config.json").is_file():
        return where / "adapter", True
    torch.manual_seed(settings["init_seed"])  # the LoRA's random init depends on nothing but its settings
    model = apply_adapter(copy.deepcopy(base), make_config("lora", lora))
    fit(model, examples, collate_fn=collate, output_dir=tmp / f"s{seed}-{task}", max_steps=steps,
        batch_size=BATCH, lr=args.lora_lr, progress=False, log_every=0, seed=seed)
    where.mkdir(parents=True, exist_ok=True)
    save_adapter(model, where / "adapter", overwrite=True)
    (where / "settings.json").write_text(json.dumps(settings, indent=2))
    return where / "adapter", False


def evaluate(base, folder: Path, splits: dict) -> dict:
    """NLL of the base with the peft LoRA ``folder`` on every split and task: {"val/hau": ..., "nll/hau": ...}."""
    import peft

    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    return {f"{name}/{t}": nll(model, examples[t]) for name, examples in splits.items() for t in examples}


def retention(scores: dict, base_nll: dict, single: dict, prefix: str) -> dict:
    """gain(merged) / gain(own LoRA) per task (the keys of ``single``) on one split ("nll": test, "val")."""
    return {t: (base_nll[f"{prefix}/{t}"] - scores[f"{prefix}/{t}"]) / (base_nll[f"{prefix}/{t}"] - single[t])
            for t in single}


def setting_data(setting: str):
    """(tokenizer, tasks, train, val, test, base corpus, info) of ``setting`` ("languages" or "proteins")."""
    from adaptome.core import text

    if setting == "languages":
        tok = text.char_tokenizer()
        train, val, test, generic, unk = data(tok)
        return tok, TASKS, train, val, test, generic, {"unk_share": unk}
    import proteins

    from adaptome.domains.protein.tokenizer import build_tokenizer

    tok = build_tokenizer()
    train, val, test, generic, info = proteins.data(tok, BLOCK)
    return tok, proteins.TASKS, train, val, test, generic, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", choices=("languages", "proteins"), default="languages",
                    help="three languages (results.json) or three Pfam families (results_proteins.json)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--base-steps", type=int, default=300)
    ap.add_argument("--lora-lr", type=float, default=LORA_LR)
    ap.add_argument("--epochs", type=float, default=None,
                    help="train each task LoRA for this many passes over its data (instead of --steps)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=HERE / "out" / "cache", help="trained-model cache folder")
    ap.add_argument("--train-only", action="store_true", help="train (or find) the models, merge nothing")
    args = ap.parse_args()
    t0 = time.time()
    from adaptome.core.merge.api import merge_adapters

    tok, tasks, task_train, task_val, task_test, generic, info = setting_data(args.setting)
    splits = {"nll": task_test, "val": task_val}
    print({t: (len(task_train[t]), len(task_val[t]), len(task_test[t])) for t in tasks}, "generic", len(generic),
          info, flush=True)
    rows, cached = [], {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base, base_where, cached["base"] = train_base(args, generic, len(tok), args.cache, tmp)
        base_nll = {f"{name}/{t}": nll(base, ex[t]) for name, ex in splits.items() for t in tasks}
        print(f"base ({time.time() - t0:.0f} s, cached {cached['base']}): {base_nll}", flush=True)
        for seed in range(args.seeds):
            paths = {}
            for t in tasks:
                paths[t], cached[f"lora {t} s{seed}"] = train_lora(args, base, base_where, t, seed, task_train[t],
                                                                   args.cache, tmp, tasks)
                if not args.train_only:
                    rows.append({"seed": seed, "merge": f"single {t}", **evaluate(base, paths[t], splits)})
                print(f"seed {seed} {t} LoRA ({time.time() - t0:.0f} s, cached {cached[f'lora {t} s{seed}']})",
                      flush=True)
            if args.train_only:
                continue
            inputs = [paths[t] for t in tasks]
            for basis, cluster_on in (("raw", "directions"), ("raw", "units"), ("raw", "updates"),
                                      ("svd", "directions"), ("svd", "units")):
                rows.append({"seed": seed, "merge": f"lego clusters {basis} {cluster_on}",
                             **clusters(inputs, seed, basis, cluster_on)})
            own = {p: {t: next(r for r in rows if r["seed"] == seed and r["merge"] == f"single {t}")[f"{p}/{t}"]
                       for t in tasks} for p in splits}
            for label, method, rank, opts in MERGES:
                out = tmp / f"s{seed}-{method}-{len(rows)}"
                opts = dict(opts, seed=seed) if method in ("lego", "dare") else opts
                if method.startswith("peft-"):
                    out = peft_factorwise(base, inputs, opts["weights"], out, method.removeprefix("peft-"),
                                          opts.get("density"))
                    distance = distance_to_sum(inputs, out, opts["weights"])
                else:
                    distance = merge_adapters(inputs, method, out, rank=rank, **opts)[
                        "relative_distance_to_weighted_sum"]
                scores = evaluate(base, out, splits)
                shape = geometry(inputs, out)
                retained = retention(scores, base_nll, own["nll"], "nll")
                val = retention(scores, base_nll, own["val"], "val")
                rows.append({"seed": seed, "merge": label, **scores,
                             **{f"retained/{u}": retained[u] for u in tasks},
                             "retained_mean": statistics.mean(retained.values()),
                             **{f"val_retained/{u}": val[u] for u in tasks},
                             "val_retained_mean": statistics.mean(val.values()),
                             "distance_to_sum": distance, **shape})
                print(label, seed, "test", {u: round(v, 3) for u, v in retained.items()},
                      "val", round(rows[-1]["val_retained_mean"], 3), flush=True)
    if args.train_only:
        print(f"trained / found all models in {time.time() - t0:.0f} s: {cached}")
        return
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    command = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/merge/run.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if v != ap.get_default(k) and k not in ("cache", "train_only"))
    res = {"command": command, "args": {k: v for k, v in vars(args).items() if k != "cache"}, "commit": commit,
           "setting": args.setting, "tasks": tasks,
           "platform": platform.platform(), "seconds": time.time() - t0, "cpu_seconds": time.process_time(),
           "versions": {p: version(p) for p in ("torch", "peft", "transformers", "scikit-learn")},
           "cached": cached, "blocks": {t: {"train": len(task_train[t]), "val": len(task_val[t]),
                                            "held_out": len(task_test[t])} for t in tasks},
           "generic_blocks": len(generic), **info,
           "base_heldout_nll": {t: base_nll[f"nll/{t}"] for t in tasks},
           "base_val_nll": {t: base_nll[f"val/{t}"] for t in tasks}, "rows": rows}
    name = "results.json" if args.setting == "languages" else "results_proteins.json"
    (HERE / name).write_text(json.dumps(res, indent=2))
    (HERE / "results.md").write_text(write_md_all())
    print(f"wrote {HERE / name} and {HERE / 'results.md'}")


if __name__ == "__main__":
    main()
