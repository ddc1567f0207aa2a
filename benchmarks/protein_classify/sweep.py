"""Diagnosis sweep for issue #14 (classifier variance, sample lengths): one training setting and seed per
call; trains both ProLLaMA stages on the classify benchmark's split and writes the raw numbers
(loss curves, per-candidate ``determine`` / ``bayes`` scores with token counts on held-out and
validation sequences, sample lengths per decoding setting) to one JSON file, for offline analysis.

Usage: ``python benchmarks/protein_classify/sweep.py --name whole --seed 0 --s1-steps 600 --s2-steps 1500
--max-seq-length 545 --val 2 --out sweep/whole-0.json``. ``--val N`` holds N training sequences per
family out of stage 2 (scored like the held-out ones, for choosing a combination weight).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "t1.0": dict(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0),
    "t0.9": dict(temperature=0.9, top_k=0, top_p=1.0, repetition_penalty=1.0),
    "t0.8-p0.95": dict(temperature=0.8, top_k=0, top_p=0.95, repetition_penalty=1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--s1-steps", type=int, default=200)
    ap.add_argument("--s2-steps", type=int, default=600)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--val", type=int, default=0)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--keep", type=Path, default=None, help="copy the stage-2 merged model here")
    args = ap.parse_args()

    import torch

    from adaptome.core.config import load_config
    from adaptome.domains.protein import classify, data, evaluate, formats, sample
    from adaptome.domains.protein.config import InstructConfig, PretrainConfig
    from adaptome.domains.protein.kmer import KmerClassifier
    from adaptome.domains.protein.stages import run_stage_config
    from adaptome.domains.protein.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    t_start = time.time()
    seed, task = args.seed, data.FAMILY
    cfgs = Path(data.data_dir()).parent / "configs"
    recs = data.pfam_families(min_count=7, max_per_family=12, max_residues=None, seed=seed)
    train, test = data.split_by_label(recs, n_test=3, seed=seed)
    val: list = []
    if args.val:
        train, val = data.split_by_label(train, n_test=args.val, seed=seed + 100)
        train, val = train, val
    held = {r.id for r in test} | {r.id for r in val}
    unlabelled = [r for r in data.pfam_families(min_count=1, max_per_family=None) if r.id not in held]
    unlabelled += data.ec_records()
    tok = build_tokenizer()
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        fasta = formats.write_fasta(((r.id, r.seq) for r in unlabelled), work / "stage1.fasta")
        records, crops = data.fit_instruction_records(train, task, tok, args.max_seq_length)
        out["crop_message"] = crops.message()
        jsonl = formats.write_instructions(records, work / "instructions.jsonl")
        arch = [f"model.hidden_size={args.hidden}", f"model.intermediate_size={2 * args.hidden}"]
        o1 = [f"train.output_dir={work / 's1'}", f"train.seed={seed}", "train.progress=false",
              f"train.max_steps={args.s1_steps}"] + arch
        c1 = dataclasses.replace(load_config(PretrainConfig, cfgs / "pretrain_tiny.yaml", o1), train_files=[str(fasta)])
        t0 = time.time()
        s1 = run_stage_config(c1)
        out["s1_seconds"] = time.time() - t0
        o2 = [f"train.output_dir={work / 's2'}", f"train.seed={seed}", f"model.name_or_path={s1['merged']}",
              "train.progress=false", f"train.max_steps={args.s2_steps}", f"max_seq_length={args.max_seq_length}"]
        c2 = dataclasses.replace(load_config(InstructConfig, cfgs / "instruct_tiny.yaml", o2), train_files=[str(jsonl)])
        t0 = time.time()
        s2 = run_stage_config(c2)
        out["s2_seconds"] = time.time() - t0
        out["s1_history"] = [h for h in s1["history"] if "loss" in h]
        out["s2_history"] = [h for h in s2["history"] if "loss" in h]
        model = s2["model"].eval()
        if args.keep:
            import shutil

            shutil.copytree(s2["merged"], args.keep, dirs_exist_ok=True)
            shutil.copytree(s1["merged"], str(args.keep) + "-s1", dirs_exist_ok=True)
        labels = sorted({r.label for r in train})
        out["labels"] = labels
        km = KmerClassifier(3, seed=0).fit([r.seq for r in train], [r.label for r in train])
        for side, rs in (("test", test), ("val", val), ("train", train)):
            if not rs:
                continue
            seqs = [r.seq for r in rs]
            rows = {k: classify._score_rows(model, tok, task, seqs, labels, k, args.max_seq_length, 16, False)
                    for k in ("determine", "bayes")}
            widest = data.widest_label(tok, labels, task.generate_prompt)
            targets = [data.generate_answer(tok, task, s, widest, args.max_seq_length) for s in seqs]
            out[side] = {"truth": [r.label for r in rs], "lengths": [len(s) for s in seqs],
                         "bayes_target_chars": [len(t) for t in targets],
                         "bayes_open": [not t.endswith(">") for t in targets],
                         "determine": rows["determine"], "bayes": rows["bayes"],
                         "kmer": list(km.predict(seqs))}
        t0 = time.time()
        real = data.pfam_families(min_count=7, max_per_family=None)
        gen_out = {}
        limit = int(1.5 * max(len(r.seq) for r in train)) + 8
        for name in args.settings:
            params = sample.SamplingParams(**SETTINGS[name], max_new_tokens=limit, seed=seed,
                                           batch_size=args.n * len(labels))
            gen = sample.sample(model, tok, task, labels, args.n, params)
            per = evaluate.per_label_report(gen, real)
            gen_out[name] = {lab: {"lengths": [len(s.seq) for s in gen if s.label == lab],
                                   "complete": [s.complete for s in gen if s.label == lab],
                                   "n_tokens": [s.n_tokens for s in gen if s.label == lab],
                                   "tails": [s.seq[-12:] for s in gen if s.label == lab],
                                   **{k: per[lab].get(k) for k in ("mean_length", "real_mean_length",
                                                                    "length_ks_pvalue", "low_complexity_share",
                                                                    "real_low_complexity_share")}}
                             for lab in labels}
        out["generation"] = gen_out
        out["max_new_tokens"] = limit
        out["gen_seconds"] = time.time() - t0
    out["seconds"] = time.time() - t_start
    out["device"] = str(next(model.parameters()).device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out))
    print(args.name, seed, f"{out['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
