"""results_quality.md from results_quality.json: every number and every verdict is computed here from the
measured results (no sentence is written by hand)."""

from __future__ import annotations

import statistics


def _rule(res: dict) -> str:
    """The selection rule of a results file ("macro_f1" for files written before the rule was recorded)."""
    return res["setup"].get("select_by", "macro_f1")


def _key(res: dict):
    from benchmarks.adapters.quality_select import rank_key

    return rank_key(_rule(res))


def _rule_text(res: dict) -> str:
    n = res["setup"]["n_select_windows"]
    if _rule(res) == "nll":
        return (f"the point with the lowest class-balanced cross-entropy over all {n} validation windows wins (the "
                "mean over families of the mean -log p(true family): the training loss on held-out windows; ties: "
                "macro-F1, then the smaller rate)")
    return f"the point with the best macro-F1 pooled over all {n} validation windows wins (ties: accuracy, then the " \
           "smaller rate)"


def _score_name(res: dict) -> str:
    return "class-balanced cross-entropy" if _rule(res) == "nll" else "macro-F1"


def _pm(s: dict) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}"


def _lr(x: float) -> str:
    return f"{x:g}"


def _versus(a: dict, b: dict, of: str = "") -> str:
    """'+x.x points [from <of>] (within / beyond the two rows' summed seed sd of y.y)' for mean a - mean b."""
    d = 100 * (a["mean"] - b["mean"])
    noise = 100 * (a["sd"] + b["sd"])
    verdict = "within" if abs(d) <= noise else "beyond"
    return f"{d:+.1f} points{' from ' + of if of else ''} ({verdict} the two rows' summed seed sd of {noise:.1f})"


def _se(a: dict, b: dict) -> float:
    """Standard error (points) of mean a - mean b over independent seeds: sqrt(sd_a^2 / n_a + sd_b^2 / n_b)."""
    return 100 * (a["sd"] ** 2 / len(a["per_seed"]) + b["sd"] ** 2 / len(b["per_seed"])) ** 0.5


def _probe_note() -> str:
    """What the probes measured about the training length (results_quality_probes.json), when they were run."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent / "results_quality_probes.json"
    if not path.is_file():
        return ""
    by: dict = {}
    probes = json.loads(path.read_text(encoding="utf-8"))
    for x in probes["length"]:
        by.setdefault(x["method"], []).append(x)
    parts = [f"{xs[0]['label']} {100 * (max(x['macro_f1'] for x in xs[1:]) - xs[0]['macro_f1']):+.1f}"
             for xs in by.values()]
    long_ = next(iter(by.values()))[1]["steps"]
    return (f" (on a {probes['n_select_train']}-window training / {probes['n_select_val']}-window validation "
            f"split inside fold 0's training part, {long_} steps changed the macro-F1 by: " + ", ".join(parts)
            + " points, best of two rates; results_quality_probes.md)")


def _trace_note(rank: int) -> str:
    """What the DyLoRA loss trace (results_quality_dylora_trace.json) measured, when it was run at ``rank``."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent / "results_quality_dylora_trace.json"
    if not path.is_file():
        return ""
    tr = json.loads(path.read_text(encoding="utf-8"))
    if tr["rank"] != rank:
        return ""
    by = {r["label"]: r for r in tr["runs"]}
    lo, hi, slow = (by[f"dylora frozen, rate {x}"] for x in ("0.001", "0.01", "0.01, head rate / 10"))
    l8 = by[f"lora r={rank}, rate 0.01"]
    a, b = tr["mid"]

    def mid(x):
        return statistics.mean(x["losses"][a - 1: b])

    def over_ranks(x):
        return 100 * statistics.mean(v["macro_f1"] for v in x["val_by_rank"].values())

    return (f" The loss trace (results_quality_dylora_trace.md, one training per setting on a selection fold): "
            f"frozen DyLoRA at rate 0.001 ends with a rank-{rank} update of "
            f"{lo['update_norm_by_rank'][str(rank)] / l8['update_norm']:.2f} x the norm of LoRA r={rank}'s at 0.01"
            f"; at rate 0.01 its update is {hi['update_norm_by_rank'][str(rank)] / l8['update_norm']:.1f} x LoRA's, "
            f"and differs with the drawn rank "
            f"(rank 1 {hi['update_norm_by_rank']['1'] / hi['update_norm_by_rank'][str(rank)]:.1f} x rank {rank}), "
            f"its training loss over steps {a}-{b} averages {mid(hi):.2f} against LoRA's {mid(l8):.2f}, and its "
            f"validation macro-F1 averaged over ranks is {over_ranks(hi):.1f} ({over_ranks(slow):.1f} with the head's "
            f"rate divided by 10, loss {mid(slow):.2f}; {over_ranks(lo):.1f} at rate 0.001).")


_OUT_OF_REACH = ", so the target is out of reach of this grid whatever the selection rule."


def _hollow(res: dict, rows: dict) -> str:
    """Why a 'met' against LoRA says little, when LoRA r=rank is not separated from the head-only row on test."""
    lo, hd = rows["lora"]["accuracy"], rows["head"]["accuracy"]
    d, noise = 100 * (lo["mean"] - hd["mean"]), 100 * (lo["sd"] + hd["sd"])
    if d > noise:
        return ""
    return (f"vacuously (LoRA r={res['setup']['rank']} at its chosen rate {_lr(rows['lora']['lr'])} is {d:+.1f} points "
            f"from head-only, within the two rows' summed seed sd of {noise:.1f}: the reference adapter's lead over "
            "the frozen encoder with its head is within seed noise, so the gap cannot show whether the method keeps "
            "what an adapter adds)")


def _verdict(met: bool, hollow: str) -> str:
    return ("met, but " + hollow) if met and hollow else "met" if met else "not met"


def _oracle(rank: int) -> dict | None:
    """The test-fold diagnostic (results_quality_oracle.json) when it was run at ``rank``."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent / "results_quality_oracle.json"
    if not path.is_file():
        return None
    o = json.loads(path.read_text(encoding="utf-8"))
    return o if o["rank"] == rank else None


def _encoder_note(res: dict, method: str) -> str:
    """What the test-fold diagnostic of the transductive encoder (results_quality_encoder.json, ``quality_encoder``)
    found for ``method`` ("dylora" or "sora"), when it ran on this run's encoder at this rank."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent / "results_quality_encoder.json"
    if not path.is_file():
        return ""
    o = json.loads(path.read_text(encoding="utf-8"))
    if o["encoder"]["key"] != res["encoder"]["key"] or o["rank"] != res["setup"]["rank"]:
        return ""
    ranks = [str(k) for k in range(1, o["rank"] + 1)]

    def acc(scores):
        return 100 * statistics.mean(x["accuracy"] for x in scores)

    lora = {k: max(acc(p["score"]) for p in o["points"] if p["method"] == "lora" and str(p["options"]["r"]) == k)
            for k in ranks}
    pts = [p for p in o["points"] if p["method"] == method]
    rates = ", ".join(_lr(x) for x in o["rates"])
    intro = (f" The test-fold diagnostic of this encoder (results_quality_encoder.md; it reads test scores and chose "
             f"nothing; seeds {', '.join(str(x) for x in o['seeds'])}, LoRA at its better rate of {rates} per rank): ")
    if method == "dylora":
        worst = {(p["options"]["mode"], p["lr"]): min(acc(p["by_rank"][k]) - lora[k] for k in ranks) for p in pts}
        (mode, lr), w = max(worst.items(), key=lambda x: x[1])
        n = sum(v >= -5 for v in worst.values())
        return intro + (f"{n} of its {len(worst)} DyLoRA points (both modes at {rates}) are within 5 points at every "
                        f"rank; the best, {mode} at {_lr(lr)}, has a worst gap of {w:+.1f}.")
    top = ranks[-1]
    got = [(p["lr"], 100 * statistics.mean(p["kept_fraction"]), acc(p["score"]) - lora[top]) for p in pts]
    return intro + "; ".join(f"SoRA (shrink {o['shrink']:g}) at {_lr(lr)} keeps {k:.0f} % of the gates at {g:+.1f} "
                             f"points from LoRA r={top}" for lr, k, g in got) + "."


def _paired_gap(a: list[dict], b: list[float]) -> float:
    return 100 * statistics.mean(x["accuracy"] - y for x, y in zip(a, b))


def _oracle_note(res: dict, method: str) -> str:
    """What the test-fold diagnostic found for ``method`` ("dylora" or "sora"), when it was run at this rank."""
    rank = res["setup"]["rank"]
    o = _oracle(rank)
    if o is None:
        return ""
    lora, ranks = o["lora_by_rank"], [str(k) for k in range(1, rank + 1)]
    pts = [p for p in o["points"] + o.get("head_part", {}).get("points", []) if p["method"] == method]
    seeds = ", ".join(str(s) for s in o["seeds"])
    head = {p.get("head_lr", o["head_lr"]) for p in pts}
    intro = (f" A diagnostic on the test folds (results_quality_oracle.md; it reads test scores and chose nothing) "
             f"trained {len(pts)} points of {method} (head rates {', '.join(_lr(h) for h in sorted(head))}) at seeds "
             f"{seeds} against LoRA at the same seeds (rate {_lr(o['source']['chosen']['lora']['lr'])}, head rate "
             f"{_lr(o['head_lr'])}, the macro-F1 rule's choice): ")
    if method == "dylora":
        worst = [(min(_paired_gap(p["by_rank"][k], lora[k]["accuracy"]) for k in ranks), p) for p in pts]
        met = [w for w, _ in worst if w >= -5]
        w, p = max(worst, key=lambda x: x[0])
        return (intro + f"{len(met)} of them are within 5 points of LoRA at every rank; the best, "
                f"{p['options']['mode']} at rate {_lr(p['lr'])} (head rate {_lr(p.get('head_lr', o['head_lr']))}), "
                f"is {w:+.1f} points from LoRA at its worst rank" + (_OUT_OF_REACH if not met else "."))
    gaps = [(_paired_gap(p["score"], lora[ranks[-1]]["accuracy"]), 100 * statistics.mean(p["kept_fraction"]), p)
            for p in pts]
    met = [g for g, kept, _ in gaps if g >= -2 and kept <= 50]
    g, kept, p = max(gaps, key=lambda x: x[0])
    return (intro + f"{len(met)} of them keep at most half of the gates within 2 points of LoRA r={rank}; the closest,"
            f" shrink {p['options']['sora_shrink']} at rate {_lr(p['lr'])} (head rate "
            f"{_lr(p.get('head_lr', o['head_lr']))}), is {g:+.1f} points with {kept:.0f} % of the gates"
            + (_OUT_OF_REACH if not met else "."))


def _history(res: dict) -> list[tuple[str, dict]]:
    """The run's later steps (``reruns``, ``added_seeds``) in the order they were made: by each entry's
    ``order`` where recorded; entries from before it was recorded come first, in the order their lists were
    first written to the file (each list is in the order of its own entries)."""
    events = [(k, x) for k in res if k in ("reruns", "added_seeds") for x in res[k]]
    return sorted(events, key=lambda e: e[1].get("order", -1))


def _event_text(kind: str, x: dict) -> str:
    """One sentence of the header for a rerun or an added-seeds step."""
    dirty = " with uncommitted changes" if x["env"]["git_dirty"] else ""
    if kind == "reruns":
        return (f" Rerun afterwards with `--rerun {' '.join(x['methods'])}` at commit `{x['env']['git_commit'][:12]}`"
                f"{dirty} ({x['seconds'] / 60:.1f} min): the {', '.join(x['methods'])} row(s), same settings, "
                "encoder and head rate"
                + (", SoRA's gate condition checked on each selection training (`--sora-kept max`)"
                   if x.get("sora_kept_rule", "pooled") == "max" else "")
                + (f", SoRA's shrink grid {', '.join(f'{v:g}' for v in x['sora_shrink_grid'])}"
                   f" (`--sora-shrink-grid`)" if "sora_shrink_grid" in x else "")
                + (", and SoRA with every gate starting at 1 at shrinks "
                   f"{', '.join(f'{v:g}' for v in x['sora_ones_shrink_grid'])} (`--sora-ones-shrink-grid`)"
                   if x.get("sora_ones_shrink_grid") else "")
                + ("; " + ", ".join(f"{n} grid points of the {m} row reused from the stored selection"
                                     for m, n in x["reused_points"].items())
                   + " (`--reuse-selection`: one of them trained again gave exactly its stored validation scores)"
                   if x.get("reused_points") else "") + ".")
    seeds = [str(v) for v in x["seeds"]]
    return (f" Seeds {', '.join(seeds)} added afterwards with `--add-seeds {' '.join(seeds)}` at commit "
            f"`{x['env']['git_commit'][:12]}`{dirty} ({x['seconds'] / 60:.1f} min): every row at the rates already "
            f"chosen, after seed 0 of the {' and '.join(x['checked_seed0'])} rows was retrained and gave exactly the "
            "stored scores.")


def _header(res: dict) -> list[str]:
    st, env, base, enc = res["setup"], res["env"], res["baselines"], res["encoder"]
    n, w = st["n_sequences"], st["n_windows"]
    fams = ", ".join(f"{k} ({st['class_sequences'][k]} sequences, {v} windows)" for k, v in st["class_counts"].items())
    pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    top = max(st["class_counts"].values())
    pre = st["pretrain"]
    mlm = enc["mlm_losses"]
    return [
        "## Adapter methods II: quality on Pfam family windows (tiny BERT), a fair protocol"
        + ("" if _disjoint(st) else ", encoder pretrained on the transductive corpus")
        + ("" if st.get("select_seeds", 1) == 1
           else f", rates chosen on {st['select_seeds']} seeds per selection fold")
        + (f", training steps chosen with the rate ({', '.join(str(n) for n in st['steps_grid'])})"
           if st.get("steps_grid") else "")
        + (", SoRA's gate condition on each selection training" if _kept_rule(st) == "max" else ""),
        "",
        f"Command: `{res['command']}` ({res['seconds'] / 60:.1f} min, {res.get('workers', 2)} worker processes, "
        f"{env['threads']} torch thread each). Git commit `{env['git_commit'][:12]}`"
        f"{' with uncommitted changes' if env['git_dirty'] else ''}; {pk}; {env['platform']}."
        + (f" Reproduce with `{res['reproduce']}` (the run's command named the options of that time)."
           if "reproduce" in res else "") + "".join(_event_text(kind, x) for kind, x in _history(res)), "",
        f"Task: {len(st['class_counts'])} Pfam families with at least {st['min_family']} seed sequences, each "
        f"sequence tiled into {st['window']}-residue windows (every {st['window']} residues, plus one ending at the "
        "last residue); "
        f"a family keeps the first window of every sequence and then further windows, sequence by sequence, up to "
        f"{st['family_cap']} windows: {fams}. {w} windows of {n} sequences; the largest family has "
        f"{100 * top / w:.1f} % of the windows. Stratified {st['folds']}-fold cross-validation grouped by sequence "
        f"(all windows of a sequence are in one fold): every sequence is tested once, so every score below is over "
        f"{w} test windows of {n} sequences, pooled over the folds, mean ± sd over {len(st['seeds'])} seeds "
        "(adapter and head init, data order).", "",
        f"Encoder: a BERT with hidden {st['encoder']['hidden_size']}, {st['encoder']['num_hidden_layers']} layers, "
        f"trained {pre['steps']} steps (batch {pre['batch']}, rate {_lr(pre['lr'])}, {pre['warmup']} warm-up steps, "
        f"linear decay) by masked-LM on random {st['window']}-residue crops of {_corpus_text(st)}; cached on disk "
        "by its settings (key "
        f"`{enc['key']}`{', reused' if enc['cached'] else ', pretrained in this run'}). Its MLM loss went from "
        f"{mlm[0]:.3f} to {mlm[-1]:.3f} nats; the corpus' residue-frequency entropy (a model that ignores context) "
        f"is {enc['unigram_entropy']:.3f} nats, so the encoder is {enc['unigram_entropy'] - mlm[-1]:.3f} nats "
        "better than context-free guessing on its own training corpus"
        + (" (on held-out sequences, and after longer pretraining, see results_quality_probes.md)."
           if _disjoint(st) else "."), "",
        f"{_steps_text(st)}, batch {st['batch']}, {_warmup_text(st)} then "
        f"linear decay to 0, through `fit` (which attaches each method's own hooks, optimizer groups and inits), "
        f"with a linear head on mean-pooled states{_probe_note() if _disjoint(st) else ''}. Selection rule, the same "
        f"for every row: fold 0's "
        f"training part ({st['n_select_sequences']} sequences, {st['n_select_windows']} windows; never fold 0's test "
        f"windows) is split into {st['select_folds']} stratified folds grouped by sequence; every grid point is "
        f"trained {_times(st)} per selection fold on the other {st['select_folds'] - 1} "
        f"({'/'.join(str(n) for n in st['n_select_train'])} training windows; {_seed_text(st)}) "
        f"and scored on it, and {_rule_text(res)}.{_steps_choice_text(st)} DyLoRA's point is scored by the mean over "
        f"ranks 1..r of its pooled {_score_name(res)} at each rank, and its mode is chosen with its rate; SoRA's "
        "shrink is "
        f"chosen with its rate among the points with at most {100 * st['sora_max_kept']:.0f} % of the gates "
        "non-zero on validation (the target's own condition"
        + ("; checked on each selection training, not on their pooled share" if _kept_rule(st) == "max" else "")
        + "). "
        f"First the head-only row's rate, {_lr(res['head_lr'])}, which is then every row's head rate; then each "
        f"row's adapter rate. The selection windows are test windows of folds 1 and 2 of the {st['folds']}-fold "
        "cross-validation (as in every earlier version of this benchmark): the rates are chosen on data the fold-1 "
        "and fold-2 models are tested on, never on fold 0's test windows. "
        "Loss: cross-entropy weighted by inverse class frequency.", "",
        f"Baselines on the same folds: majority class {100 * base['majority']['accuracy']:.1f} % accuracy "
        f"(macro-F1 {100 * base['majority']['macro_f1']:.1f}); logistic regression on amino-acid composition "
        f"(C = 100, balanced) {100 * base['composition_logreg']['accuracy']:.1f} % (macro-F1 "
        f"{100 * base['composition_logreg']['macro_f1']:.1f}).", ""]


def _separation(res: dict, rows: dict) -> list[str]:
    base, hd = res["baselines"], rows["head"]
    maj = 100 * base["majority"]["accuracy"]
    out = [f"Separation of the baselines: head-only {_pm(hd['accuracy'])} % accuracy is "
           f"{100 * hd['accuracy']['mean'] - maj:+.1f} points from the majority class ({maj:.1f} %)"]
    if "full" in rows:
        out[0] += f"; full fine-tuning is {_versus(rows['full']['accuracy'], hd['accuracy'], 'head-only')}"
    sds = [100 * r["accuracy"]["sd"] for r in res["rows"]]
    out[0] += (f". Seed sd of accuracy over the rows: median {sorted(sds)[len(sds) // 2]:.1f}, largest "
               f"{max(sds):.1f} points.")
    return out + [""]


def _kept_rule(st: dict) -> str:
    """How SoRA's gate condition was checked on a grid point's selection trainings: "pooled" or "max" (each)."""
    return st.get("sora_kept_rule", "pooled")


def _steps_text(st: dict) -> str:
    """How many steps a training runs: the fixed number, or the grid every row chose from (``--steps-grid``)."""
    grid = st.get("steps_grid")
    if not grid:
        return f"Each training runs {st['steps']} steps"
    return (f"Each training runs the number of steps its row chose with its rate on validation, from "
            f"{', '.join(str(n) for n in grid)} (the benchmark's default is {st['steps']})")


def _warmup_text(st: dict) -> str:
    if not st.get("steps_grid"):
        return f"{st['warmup_steps']} linear warm-up steps"
    return f"a linear warm-up over {st['warmup_steps'] / st['steps']:.0%} of its steps"


def _steps_choice_text(st: dict) -> str:
    if not st.get("steps_grid"):
        return ""
    return (" The number of steps is part of every grid point: each row's grid is its rates (and options) x "
            f"{{{', '.join(str(n) for n in st['steps_grid'])}}} steps, one choice per row; the test-fold trainings "
            "use the row's choice, and LoRA at ranks below r uses LoRA r's rate and number of steps.")


def _row_steps(res: dict, row: dict) -> int:
    """The number of steps a row's trainings ran (its chosen one under ``--steps-grid``)."""
    return row["options"].get("steps", res["setup"]["steps"])


def _steps_note(st: dict, steps: int) -> str:
    """", N steps" when the rows chose their number of steps (``--steps-grid``), else nothing."""
    return f", {steps} steps" if st.get("steps_grid") else ""


def _steps_columns(st: dict) -> tuple[str, str]:
    """(header cell, alignment cell) of a selection table's steps column; empty without ``--steps-grid``."""
    return (" steps |", "---:|") if st.get("steps_grid") else ("", "")


def _point_steps(p: dict) -> str:
    """", N steps" of a grid point that names its number of steps, else nothing."""
    return f", {p['variant']['steps']} steps" if "steps" in p["variant"] else ""


def _steps_cell(p: dict) -> str:
    return f" {p['variant']['steps']} |" if "steps" in p["variant"] else ""


def _variant(v: dict) -> str:
    return ", ".join(f"{k} {x}" for k, x in v.items())


def _chosen_point(sel: dict) -> dict:
    return next(p for p in sel["points"] if p["lr"] == sel["chosen"] and p["variant"] == sel["chosen_variant"])


def _table(res: dict) -> list[str]:
    nll = _rule(res) == "nll"
    lines = ["| method | trainable (encoder) | lr grid | chosen lr | validation macro-F1 at chosen | "
             + ("validation cross-entropy at chosen | " if nll else "") + "accuracy % | macro-F1 % |",
             "|---|---:|---|---:|---:|" + ("---:|" if nll else "") + "---:|---:|"]
    for r in res["rows"]:
        sel = r["selection"]
        val = _chosen_point(sel)["macro_f1"]
        ce = f" {_chosen_point(sel)['nll']:.3f} |" if nll else ""
        var = f" ({_variant(sel['chosen_variant'])})" if sel["chosen_variant"] else ""
        lines.append(f"| {r['label']} | {r['trainable_encoder']:,} | {', '.join(_lr(x) for x in sel['grid'])} | "
                     f"{_lr(r['lr'])}{var} | {100 * val:.1f} |{ce} {_pm(r['accuracy'])} | {_pm(r['macro_f1'])} |")
    edge = [f"{r['label']} ({_lr(r['lr'])}, the {'largest' if r['lr'] == max(r['selection']['grid']) else 'smallest'})"
            for r in res["rows"] if r["lr"] in (min(r["selection"]["grid"]), max(r["selection"]["grid"]))]
    lines += ["", f"Rows whose chosen rate is at an end of their grid (a better rate may lie outside it): "
              f"{'; '.join(edge)}." if edge else "Every chosen rate is inside its grid."]
    return lines + [""] + _validation_gap(res) + _rule_note(res)


def _other_rule(res: dict) -> tuple[str, dict] | None:
    """(file name, results) of the benchmark at the same rank, steps and encoder under the other selection rule."""
    import json
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parent.glob("results_quality*.json")):
        other = json.loads(path.read_text(encoding="utf-8"))
        st = other.get("setup")
        if (st and st.get("rank") == res["setup"]["rank"] and st.get("select_by", "macro_f1") != _rule(res)
                and st.get("steps") == res["setup"]["steps"] and st.get("steps_grid") == res["setup"].get("steps_grid")
                and other["encoder"]["key"] == res["encoder"]["key"]):
            return path.stem, other
    return None


def _rule_note(res: dict) -> list[str]:
    """The chosen rates and test accuracy of every row under the other selection rule, beside this file's."""
    found = _other_rule(res)
    if found is None:
        return []
    name, other = found
    mine = {r["label"]: r for r in res["rows"]}
    parts = []
    for r in other["rows"]:
        m = mine.get(r["label"])
        if m is None:
            continue
        var = f" {_variant(r['selection']['chosen_variant'])}" if r["selection"]["chosen_variant"] else ""
        parts.append(f"{r['label']} {_lr(r['lr'])}{var}, {100 * r['accuracy']['mean']:.1f} % "
                     f"({100 * (r['accuracy']['mean'] - m['accuracy']['mean']):+.1f})")
    rule = "class-balanced cross-entropy" if other["setup"].get("select_by") == "nll" else "macro-F1"
    return [f"The other selection rule, {rule} ({name}.md, {len(other['setup']['seeds'])} seeds, same encoder and "
            f"grids), chose per row (rate, test accuracy, difference from this file's): " + "; ".join(parts) + ".",
            ""]


def _validation_gap(res: dict) -> list[str]:
    """How far the validation split separates the adapter rows from head-only, beside the test folds' gap."""
    rows = {r["method"]: r for r in res["rows"]}
    hd = rows["head"]
    h_val = _chosen_point(hd["selection"])["macro_f1"]
    ad = [r for r in res["rows"] if r["method"] not in ("head", "full")]
    val = {r["label"]: _chosen_point(r["selection"])["macro_f1"] for r in ad}
    above = [lab for lab, v in val.items() if v > h_val]
    best = max(val, key=val.get)
    top = max(ad, key=lambda r: r["macro_f1"]["mean"])
    return [f"Validation against test: at their chosen points, {len(above)} of the {len(ad)} adapter rows score "
            f"above the head-only row's validation macro-F1 ({100 * h_val:.1f}); the best, {best}, by "
            f"{100 * (val[best] - h_val):+.1f} points. On the test folds the best adapter row, {top['label']}, is "
            f"{100 * (top['macro_f1']['mean'] - hd['macro_f1']['mean']):+.1f} points of macro-F1 from head-only "
            f"(its validation score {100 * val[top['label']]:.1f}).", ""]


def _dylora(res: dict, rows: dict) -> list[str]:
    st, dy, lora_r = res["setup"], rows["dylora"], res["lora_by_rank"]
    lines = [f"### DyLoRA at every rank from one training vs LoRA trained at that rank (alpha {st['alpha']:g})", "",
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
    hollow = _hollow(res, rows)
    mode = dy["options"].get("mode", "frozen")
    how = ("the official default: at a sampled rank k only component k trains" if mode == "frozen" else
           "at a sampled rank k every component <= k trains")
    lines += ["", f"DyLoRA ({mode} mode, {how}; chosen with its rate on validation, see below; rank sampler seeded "
              f"with the run's seed) was trained once (rate {_lr(dy['lr'])}{_steps_note(st, _row_steps(res, dy))}) and "
              f"LoRA {len(gaps)} times (rate {_lr(lora_r[str(st['rank'])]['lr'])}, LoRA's chosen rate at r={st['rank']}"
              f"{_steps_note(st, _row_steps(res, rows['lora']))}), both with scale "
              f"alpha / k at rank k. Target \"DyLoRA within 5 points of LoRA at every rank\": "
              f"{_verdict(met, hollow)}; the largest shortfall is {gaps[worst]:+.1f} points at rank {worst}"
              f" (standard error of that gap over the {len(dy['accuracy']['per_seed'])} seeds "
              f"{_se(dy['by_rank'][str(worst)]['accuracy'], lora_r[str(worst)]['accuracy']):.1f} points)."]
    if not met:
        over = {k: -5 - g for k, g in gaps.items() if g < -5}
        lines[-1] += (" Ranks beyond the 5-point margin: " + "; ".join(
            f"rank {k} by {v:.1f} points ({v / _se(dy['by_rank'][str(k)]['accuracy'], lora_r[str(k)]['accuracy']):.1f}"
            " standard errors)" for k, v in sorted(over.items())) + ".")
    hd, top = rows["head"], lora_r[str(st["rank"])]
    lines[-1] += (f" For scale: LoRA r={st['rank']} is {_versus(top['accuracy'], hd['accuracy'], 'head-only')} and "
                  f"DyLoRA at full rank is {_versus(dy['accuracy'], hd['accuracy'], 'head-only')}, so a gap to LoRA "
                  "is only as informative as the adapters' lead over the frozen encoder with its head.")
    if not met and mode == "frozen":
        lines[-1] += (f" A candidate reason: with ranks drawn uniformly from 1..{st['rank']}, each component "
                      f"receives a gradient on about {_row_steps(res, dy) / st['rank']:.0f} of the "
                      f"{_row_steps(res, dy)} steps, "
                      f"while each LoRA trains all its components on every step.")
    elif not met:
        lines[-1] += (f" A candidate reason: with ranks drawn uniformly from 1..{st['rank']}, component k receives "
                      f"a gradient on (r - k + 1) / r of the steps, so the last one on about "
                      f"{_row_steps(res, dy) / st['rank']:.0f} of the {_row_steps(res, dy)}, while each LoRA trains "
                      "all its "
                      "components on every step.")
    if not met:
        v_dy, v_lo = _chosen_point(dy["selection"])["macro_f1"], _chosen_point(rows["lora"]["selection"])["macro_f1"]
        v_hd = _chosen_point(hd["selection"])["macro_f1"]
        where = ("the smallest of its grid" if dy["lr"] == min(dy["selection"]["grid"]) else
                 "the largest of its grid" if dy["lr"] == max(dy["selection"]["grid"]) else "inside its grid")
        lines[-1] += (f" On validation, DyLoRA's chosen point (rate {_lr(dy['lr'])}, {where}) scores "
                      f"{100 * v_dy:.1f} macro-F1 averaged over ranks, LoRA r={st['rank']}'s {100 * v_lo:.1f} and "
                      f"head-only {100 * v_hd:.1f}; DyLoRA minus LoRA r={st['rank']} is {100 * (v_dy - v_lo):+.1f} "
                      f"points of macro-F1 there and {100 * (dy['macro_f1']['mean'] - top['macro_f1']['mean']):+.1f} "
                      "on the test folds at full rank.")
        lines[-1] += _trace_note(st["rank"]) if _disjoint(st) else ""
    lines[-1] += _oracle_note(res, "dylora") if _disjoint(st) else _encoder_note(res, "dylora")
    return lines + [""] + _dylora_selection(res, dy)


def _times(st: dict) -> str:
    n = st.get("select_seeds", 1)
    return "once" if n == 1 else f"{n} times (seeds pooled)"


def _seed_text(st: dict) -> str:
    if st.get("select_seeds", 1) == 1:
        return "seed = the selection fold's index"
    return f"seeds j, j + {st['select_folds']}, ... for selection fold j"


def _pooled_over(st: dict) -> str:
    n = st.get("select_seeds", 1)
    return f"{st['select_folds']} selection folds" + ("" if n == 1 else f" x {n} seeds")


def _dylora_selection(res: dict, dy: dict) -> list[str]:
    sel, r = dy["selection"], res["setup"]["rank"]
    nll = _rule(res) == "nll"
    steps_h, steps_s = _steps_columns(res["setup"])
    lines = [f"DyLoRA's selection grid (validation macro-F1 %{' and class-balanced cross-entropy' if nll else ''}, "
             f"pooled over the {_pooled_over(res['setup'])}; the score is the mean over ranks):",
             "", f"| mode |{steps_h} rate | macro-F1, mean over ranks 1..{r} | rank 1 | rank {r} |"
             + (f" cross-entropy, mean over ranks | rank 1 | rank {r} |" if nll else ""),
             f"|---|{steps_s}---:|---:|---:|---:|" + ("---:|---:|---:|" if nll else "")]
    for p in sel["points"]:
        br = p["by_rank_macro_f1"]
        ce = (f" {p['nll']:.3f} | {p['by_rank_nll']['1']:.3f} | {p['by_rank_nll'][str(r)]:.3f} |" if nll else "")
        lines.append(f"| {p['variant'].get('mode', 'frozen')} |{_steps_cell(p)} {_lr(p['lr'])} | "
                     f"{100 * p['macro_f1']:.1f} | "
                     f"{100 * br['1']:.1f} | {100 * br[str(r)]:.1f} |{ce}")
    best = {}
    for p in sel["points"]:
        m = p["variant"].get("mode", "frozen")
        if m not in best or _key(res)(p) > _key(res)(best[m]):
            best[m] = p
    lines += ["", "Best point per mode: " + "; ".join(
        f"{m} at rate {_lr(p['lr'])}" + _point_steps(p)
        + ", " + (f"cross-entropy {p['nll']:.3f} (macro-F1 {100 * p['macro_f1']:.1f})"
                                           if nll else f"{100 * p['macro_f1']:.1f}")
        for m, p in best.items()) + "."]
    return lines + [""]


def _sora(res: dict, rows: dict) -> list[str]:
    st, so, lo = res["setup"], rows["sora"], rows["lora"]
    s = so["sora"]
    kept_frac = s["kept_fraction_mean"]
    d_sora = 100 * (so["accuracy"]["mean"] - lo["accuracy"]["mean"])
    met = kept_frac <= 0.5 and d_sora >= -2
    shrink = so["options"]["sora_shrink"]
    init = ("every gate starting at 1" if so["options"].get("gate_init") == "ones"
            else "gates drawn N(0, 1) as in the official code")
    return ["### SoRA sparsity", "",
            f"SoRA ({init}; paper rule, constant lambda = {shrink} / (sum of the run's per-step rates) = "
            f"{s['sparse_lambda']:.3g} at its chosen rate {_lr(so['lr'])}, so the soft threshold removes "
            f"{shrink} in total over a run; the shrink chosen with the rate on validation, see below) kept "
            f"{'/'.join(str(v) for v in s['kept_gates_per_seed'])} of "
            f"{s['gates_per_seed']} gates (the {st['folds']} fold models together; one number per seed), "
            f"{100 * kept_frac:.0f} % on average; pruned, a fold model has {s['pruned_params_mean']:,.0f} adapter "
            f"parameters on average against LoRA r={st['rank']}'s {lo['trainable_encoder']:,}. Its accuracy is "
            f"{_versus(so['accuracy'], lo['accuracy'], 'LoRA r=' + str(st['rank']))}; standard error of the gap over "
            f"the seeds {_se(so['accuracy'], lo['accuracy']):.1f} points (on validation: SoRA's chosen point "
            f"{100 * _chosen_point(so['selection'])['macro_f1']:.1f} macro-F1, LoRA's "
            f"{100 * _chosen_point(lo['selection'])['macro_f1']:.1f}). Target \"half or fewer gates "
            f"non-zero within 2 points of LoRA\": {_verdict(met, _hollow(res, rows))} ({100 * kept_frac:.0f} % of "
            "gates, "
            f"{d_sora:+.1f} points)" + ("." if met else "; " + "; ".join(
                x for x in (f"{100 * kept_frac - 50:.0f} points of the gate share above half" if kept_frac > 0.5
                            else "", f"{-2 - d_sora:.1f} points of accuracy beyond the 2-point margin"
                            if d_sora < -2 else "") if x) + ".")
        + (_oracle_note(res, "sora") if _disjoint(st) else _encoder_note(res, "sora")), ""] + _sora_by_seed_set(
                res, so, lo) + _sora_selection(res, so)


def seed_sets(res: dict, method: str = "sora") -> list[list[int]]:
    """The test seeds of ``method``'s row in the sets they were trained in: the seeds present when the row was
    last trained (the first run, or its last ``--rerun``, which retrains every seed then present), then each
    ``--add-seeds`` step's made after that."""
    reruns = [x for x in res.get("reruns", []) if method in x["methods"]]
    since = max((x.get("order", -1) for x in reruns), default=None)
    added = [list(x["seeds"]) for x in res.get("added_seeds", [])
             if since is None or x.get("order", -1) > since]
    first = [s for s in res["setup"]["seeds"] if all(s not in a for a in added)]
    return [first] + added


def sora_target_by_seed_set(res: dict, so: dict, lo: dict) -> list[dict]:
    """SoRA's target on each set of seeds (``seed_sets``): the mean share of gates non-zero over the fold models,
    the mean accuracy gap to LoRA (points) and whether both hold (at most half, at least -2)."""
    seeds = res["setup"]["seeds"]
    out = []
    for group in seed_sets(res):
        idx = [seeds.index(x) for x in group]
        kept = statistics.mean(so["sora"]["kept_gates_per_seed"][i] for i in idx) / so["sora"]["gates_per_seed"]
        gap = 100 * statistics.mean(so["accuracy"]["per_seed"][i] - lo["accuracy"]["per_seed"][i] for i in idx)
        out.append({"seeds": group, "kept": kept, "gap": gap, "met": kept <= 0.5 and gap >= -2})
    return out


def _sora_by_seed_set(res: dict, so: dict, lo: dict) -> list[str]:
    """One sentence per set of seeds when seeds were added afterwards (nothing otherwise)."""
    sets = sora_target_by_seed_set(res, so, lo)
    if len(sets) < 2:
        return []
    parts = [f"seeds {', '.join(str(x) for x in g['seeds'])}: {100 * g['kept']:.0f} % of gates, {g['gap']:+.1f} "
             f"points ({'met' if g['met'] else 'not met'})" for g in sets]
    return ["SoRA's target on each set of seeds as its row was trained (the seeds of its last training, then each "
            "set added after it): "
            + "; ".join(parts) + f". Met on {sum(g['met'] for g in sets)} of {len(sets)} sets.", ""]


def _sora_selection(res: dict, so: dict) -> list[str]:
    sel, cap = so["selection"], res["setup"]["sora_max_kept"]
    nll = _rule(res) == "nll"
    steps_h, steps_s = _steps_columns(res["setup"])
    each = _kept_rule(res["setup"]) == "max"
    key = "kept_fraction_max" if each else "kept_fraction"
    inits = any("gate_init" in p["variant"] for p in sel["points"])
    lines = [f"SoRA's selection grid (validation macro-F1 %{' and class-balanced cross-entropy' if nll else ''} "
             f"pooled over the {_pooled_over(res['setup'])}, and the share of gates non-zero at the "
             "end of those trainings" + ("; the largest share in one of them decides eligibility" if each else "")
             + "):", "",
             f"|{' gate init |' if inits else ''} total shrink |{steps_h} rate | validation macro-F1 % |"
             + (" validation cross-entropy |" if nll else "") + " gates non-zero % |"
             + (" largest in one training % |" if each else "") + " eligible |",
             f"|{'---|' if inits else ''}---:|{steps_s}---:|---:|" + ("---:|" if nll else "") + "---:|"
             + ("---:|" if each else "") + "---|"]
    for p in sel["points"]:
        ce = f" {p['nll']:.3f} |" if nll else ""
        init = f" {p['variant'].get('gate_init', 'normal')} |" if inits else ""
        lines.append(f"|{init} {p['variant']['sora_shrink']} |{_steps_cell(p)} {_lr(p['lr'])} | "
                     f"{100 * p['macro_f1']:.1f} |{ce} "
                     f"{100 * p['kept_fraction']:.0f} |" + (f" {100 * p[key]:.0f} |" if each else "")
                     + f" {'yes' if p[key] <= cap else 'no'} |")
    n_ok = sum(p[key] <= cap for p in sel["points"])
    best_all = max(sel["points"], key=_key(res))
    lines += ["", f"{n_ok} of {len(sel['points'])} points keep at most {100 * cap:.0f} % of the gates on validation"
              + (" in every one of their selection trainings" if each else "")
              + ("; the chosen one is the best of those." if sel["constraint_met"] else
                 "; none does, so the best point overall was taken.")
              + " The best point without the gate condition: "
              + (f"gate init {best_all['variant'].get('gate_init', 'normal')}, " if inits else "")
              + f"shrink {best_all['variant']['sora_shrink']}, rate "
              f"{_lr(best_all['lr'])}" + _point_steps(best_all) + ", "
              + (f"cross-entropy {best_all['nll']:.3f} (macro-F1 {100 * best_all['macro_f1']:.1f})" if nll else
                 f"{100 * best_all['macro_f1']:.1f}")
              + f" with {100 * best_all['kept_fraction']:.0f} % of the gates non-zero."]
    return lines + [""]


def _baselines(res: dict, rows: dict) -> list[str]:
    base, hd = res["baselines"], rows["head"]
    lines = ["### Against the baselines", ""]
    for metric, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        below = [r for r in res["rows"] if r["method"] != "head" and r[metric]["mean"] < hd[metric]["mean"]]
        if not below:
            lines += [f"No row is below the head-only row in mean {name} ({100 * hd[metric]['mean']:.1f} %).", ""]
            continue
        parts = [f"{r['label']} {_versus(r[metric], hd[metric])}" for r in below]
        lines += [f"Below the head-only row in mean {name} ({100 * hd[metric]['mean']:.1f} %): " + "; ".join(parts)
                  + ".", ""]
    comp = base["composition_logreg"]["macro_f1"]
    above = [r["label"] for r in res["rows"] if r["macro_f1"]["mean"] > comp]
    lines += [f"{len(above)} of {len(res['rows'])} rows beat the amino-acid-composition baseline's macro-F1 "
              f"({100 * comp:.1f})" + (f": {', '.join(above)}." if above else "."), ""]
    best = max(res["rows"], key=lambda r: r["accuracy"]["mean"])
    lines += [f"Best mean accuracy: {best['label']} ({_pm(best['accuracy'])} %). One test window is "
              f"{100 / res['setup']['n_windows']:.2f} points; differences within the rows' seed sd are not resolved "
              "by this benchmark.", ""]
    return lines



def _disjoint(st: dict) -> bool:
    """Whether the encoder's corpus held no task sequence (``quality_task.use_corpus``; older runs: always)."""
    return st.get("corpus", "disjoint") == "disjoint"


def _corpus_text(st: dict) -> str:
    """What the encoder was pretrained on (``quality_task.use_corpus``)."""
    disjoint = (f"{st['n_unlabeled']} shipped sequences ({st['unlabeled_residues']:,} residues) that are never task "
                f"sequences (nrPDB-EC and the {st['n_small_pfam']} sequences of smaller Pfam families)")
    if _disjoint(st):
        return disjoint
    return (f"{disjoint} PLUS the {st['n_task_sequences']} sequences of the task's families, without their labels "
            "(the 'transductive' corpus: the test windows' sequences are in it, as the Pfam seeds are in the UniRef "
            "corpus a protein LM is pretrained on; no label is)")


def markdown(res: dict) -> str:
    rows = {r["method"]: r for r in res["rows"]}
    lines = _header(res) + _separation(res, rows) + _table(res) + _dylora(res, rows)
    if "sora" in rows:
        lines += _sora(res, rows)
    return "\n".join(lines + _baselines(res, rows))
