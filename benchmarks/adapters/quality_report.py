"""results_quality.md from results_quality.json: every number and every verdict is computed here from the
measured results (no sentence is written by hand)."""

from __future__ import annotations


def _pm(s: dict) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}"


def _lr(x: float) -> str:
    return f"{x:g}"


def markdown(res: dict) -> str:
    st, env, base = res["setup"], res["env"], res["baselines"]
    rows = {r["method"]: r for r in res["rows"]}
    n, counts = st["n_sequences"], st["class_counts"]
    fams = ", ".join(f"{k} ({v})" for k, v in counts.items())
    pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    lines = [
        "## Adapter methods II: quality on Pfam families (tiny BERT), a fair protocol", "",
        f"Command: `{res['command']}` ({res['seconds'] / 60:.1f} min, {env['threads']} threads). "
        f"Git commit `{env['git_commit'][:12]}`{' with uncommitted changes' if env['git_dirty'] else ''}; "
        f"{pk}; {env['platform']}.", "",
        f"Task: {len(counts)} Pfam families with at least {st['min_family']} members ({fams}), "
        f"{n} sequences cropped to {st['max_len']} residues. Stratified {st['folds']}-fold cross-validation: "
        f"each sequence is tested once, so every score below is over {n} test sequences, pooled over the folds, "
        f"mean ± sd over {len(st['seeds'])} seeds (adapter and head init, data order).", "",
        f"Encoder: a BERT with hidden {st['encoder']['hidden_size']}, {st['encoder']['num_hidden_layers']} layers, "
        f"trained {st['pretrain_steps']} steps by masked-LM on {st['n_unlabeled']} shipped sequences that are "
        f"never test sequences (nrPDB-EC and {st['n_small_pfam']} sequences of smaller Pfam families). "
        f"Each row trains {st['steps']} steps, batch {st['batch']}, constant rate, through `fit` (which attaches "
        f"each method's own hooks, optimizer groups and inits), with a linear head on mean-pooled states at "
        f"rate {_lr(st['head_lr'])}; the adapter's rate is chosen from the row's grid by validation macro-F1 "
        f"({st['n_select_train']} training / {st['n_select_val']} validation sequences from fold 0's training part, "
        "seed 0).", "",
        "Loss: cross-entropy weighted by inverse class frequency. "
        f"Baselines on the same folds: majority class {100 * base['majority']['accuracy']:.1f} % accuracy "
        f"(macro-F1 {100 * base['majority']['macro_f1']:.1f}); logistic regression on amino-acid composition "
        "(C = 100, balanced) "
        f"{100 * base['composition_logreg']['accuracy']:.1f} % (macro-F1 "
        f"{100 * base['composition_logreg']['macro_f1']:.1f}).", "",
        "| method | trainable (encoder) | lr grid | chosen lr | validation macro-F1 at chosen | accuracy % | "
        "macro-F1 % |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        sel = r["selection"]
        val = sel["val"][str(sel["chosen"])]["macro_f1"]
        lines.append(f"| {r['label']} | {r['trainable_encoder']:,} | {', '.join(_lr(x) for x in sel['grid'])} | "
                     f"{_lr(r['lr'])} | {100 * val:.1f} | {_pm(r['accuracy'])} | {_pm(r['macro_f1'])} |")
    lines.append("")

    dy, lora_r = rows["dylora"], res["lora_by_rank"]
    lines += [f"### DyLoRA at every rank from one training vs LoRA trained at that rank (alpha {st['alpha']:g})", "",
              "| rank | DyLoRA accuracy % | LoRA accuracy % | gap (points) | DyLoRA macro-F1 % | LoRA macro-F1 % |",
              "|---:|---:|---:|---:|---:|---:|"]
    gaps = {}
    for k, s in dy["by_rank"].items():
        lr_ = lora_r[k]
        gaps[int(k)] = 100 * (s["accuracy"]["mean"] - lr_["accuracy"]["mean"])
        lines.append(f"| {k} | {_pm(s['accuracy'])} | {_pm(lr_['accuracy'])} | {gaps[int(k)]:+.1f} | "
                     f"{_pm(s['macro_f1'])} | {_pm(lr_['macro_f1'])} |")
    worst = min(gaps, key=gaps.get)
    met = all(g >= -5 for g in gaps.values())
    lines += ["", f"DyLoRA was trained once (rate {_lr(dy['lr'])}) and LoRA {len(gaps)} times (rate "
              f"{_lr(lora_r[str(st['rank'])]['lr'])}, LoRA's chosen rate at r={st['rank']}). Target "
              f"\"DyLoRA within 5 points of LoRA at every rank\": {'met' if met else 'not met'}; the largest "
              f"shortfall is {gaps[worst]:+.1f} points at rank {worst}.", ""]

    if "sora" in rows:
        so, lo = rows["sora"], rows["lora"]
        s = so["sora"]
        kept_frac = s["kept_fraction_mean"]
        d_sora = 100 * (so["accuracy"]["mean"] - lo["accuracy"]["mean"])
        sora_met = kept_frac <= 0.5 and d_sora >= -2
        lines += ["### SoRA sparsity", "",
                  f"SoRA (paper rule, lambda = {st['sora_shrink']} / (lr x steps) = {s['sparse_lambda']:.3g} at its "
                  f"chosen rate {_lr(so['lr'])}) kept {statistics_str(s['kept_gates_per_seed'])} of "
                  f"{s['gates_per_seed']} gates (the {st['folds']} fold models together; one number per seed), "
                  f"{100 * kept_frac:.0f} % on average; pruned, a fold model has {s['pruned_params_mean']:,.0f} "
                  f"adapter parameters on average against LoRA r={st['rank']}'s "
                  f"{lo['trainable_encoder']:,}. Its accuracy is {d_sora:+.1f} points from LoRA's. Target \"half or "
                  f"fewer gates non-zero within 2 points of LoRA\": {'met' if sora_met else 'not met'}.", ""]

    hd = rows["head"]
    lines += ["### Against the baselines", ""]
    for metric, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        head = hd[metric]
        below = [r for r in res["rows"] if r["method"] != "head" and r[metric]["mean"] < head["mean"]]
        if not below:
            lines += [f"No row is below the head-only row in mean {name} ({100 * head['mean']:.1f} %).", ""]
            continue
        parts = []
        for r in below:
            d = 100 * (r[metric]["mean"] - head["mean"])
            noise = 100 * (r[metric]["sd"] + head["sd"])
            verdict = "within the two rows' summed seed sd" if -d <= noise else "beyond the two rows' summed seed sd"
            parts.append(f"{r['label']} ({d:+.1f} points; {verdict} of {noise:.1f})")
        lines += [f"Below the head-only row in mean {name} ({100 * head['mean']:.1f} %): " + "; ".join(parts) + ".",
                  ""]
    comp = base["composition_logreg"]["macro_f1"]
    above = [r["label"] for r in res["rows"] if r["macro_f1"]["mean"] > comp]
    lines += [f"{len(above)} of {len(res['rows'])} rows beat the amino-acid-composition baseline's macro-F1 "
              f"({100 * comp:.1f})" + (f": {', '.join(above)}." if above else "."), ""]
    best = max(res["rows"], key=lambda r: r["accuracy"]["mean"])
    lines += [f"Best mean accuracy: {best['label']} ({_pm(best['accuracy'])} %). One test sequence is "
              f"{100 / n:.1f} points; differences within a row's sd are not resolved by this benchmark.", ""]
    return "\n".join(lines)


def statistics_str(values: list[int]) -> str:
    return "/".join(str(v) for v in values)
