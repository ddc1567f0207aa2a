"""results.md of the merge benchmark, every sentence computed from results.json (the language setting) and
results_proteins.json (the protein setting, whose own paragraphs are in report_proteins.py).

Usage: python benchmarks/merge/report.py  (rewrites results.md from results.json and results_proteins.json)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
TASKS = ["hau", "swa", "yor"]
NAMES = {"hau": "Hausa", "swa": "Swahili", "yor": "Yoruba"}
RANK = 8
#: (label, method, rank, options)
MERGES = [
    ("lego (dual reweighting)", "lego", RANK, {}),
    ("lego (dual reweighting, max norm)", "lego", RANK, {"param_norm": "max"}),
    ("lego (no reweighting)", "lego", RANK, {"param_reweight": False, "output_reweight": False}),
    ("lego on raw units (dual reweighting)", "lego", RANK, {"cluster_on": "units"}),
    ("lego on raw units (dual reweighting, max norm)", "lego", RANK, {"cluster_on": "units", "param_norm": "max"}),
    ("lego on raw units (no reweighting)", "lego", RANK, {"cluster_on": "units", "param_reweight": False,
                                                          "output_reweight": False}),
    ("lego svd units (dual reweighting)", "lego", RANK, {"basis": "svd"}),
    ("lego svd units on raw units (dual reweighting)", "lego", RANK, {"basis": "svd", "cluster_on": "units"}),
    ("lego update centroid (dual reweighting)", "lego", RANK, {"centroid": "update"}),
    ("lego update centroid (no reweighting)", "lego", RANK, {"centroid": "update", "param_reweight": False,
                                                             "output_reweight": False}),
    ("lego update centroid on raw units (dual reweighting)", "lego", RANK, {"centroid": "update",
                                                                            "cluster_on": "units"}),
    ("lego update centroid, sign-free clusters (dual reweighting)", "lego", RANK, {"centroid": "update",
                                                                                   "cluster_on": "updates"}),
    ("linear (sum)", "linear", RANK, {}),
    ("linear (mean)", "linear", RANK, {"weights": [1 / 3] * 3}),
    ("linear (weights 0.5, diagnostic)", "linear", RANK, {"weights": [0.5] * 3}),
    ("ties (density 0.5)", "ties", RANK, {"density": 0.5}),
    ("dare (density 0.5)", "dare", RANK, {"density": 0.5}),
    ("peft linear (factor-wise, weights 1/3)", "peft-linear", RANK, {"weights": [1 / 3] * 3}),
    ("peft linear (factor-wise, weights 1)", "peft-linear", RANK, {"weights": [1.0] * 3}),
    ("peft ties (factor-wise, density 0.5)", "peft-ties", RANK, {"weights": [1.0] * 3, "density": 0.5}),
    ("lego (rank 24, dual reweighting)", "lego", 3 * RANK, {}),
    ("cat (rank 24, the exact sum)", "cat", None, {}),
]
LEGO = "lego (dual reweighting)"
PEFT_FACTOR_MERGES = ("peft linear (factor-wise, weights 1/3)", "peft linear (factor-wise, weights 1)",
                      "peft ties (factor-wise, density 0.5)")  # peft's own merges of the factors, for reference
RIVALS = ("linear (sum)", "linear (mean)", "ties (density 0.5)")


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def tasks_of(res: dict) -> list[str]:
    """The setting's tasks (results written before the protein setting hold no "tasks": the languages)."""
    return res.get("tasks", TASKS)


def names_of(res: dict) -> dict[str, str]:
    return NAMES if res.get("setting", "languages") == "languages" else {t: t for t in tasks_of(res)}


def specific(res: dict, row: dict) -> float:
    """Language-specific share kept, mean over tasks: (F_t - NLL_merged) / (F_t - NLL_own), F_t the mean
    held-out NLL on t of the two other languages' LoRAs (same seed): 1 = as good as t's own LoRA,
    0 = no better than a LoRA of another language."""
    single = {r["merge"].removeprefix("single "): r for r in res["rows"]
              if r["seed"] == row["seed"] and r["merge"].startswith("single ")}
    out, tasks = [], tasks_of(res)
    for t in measurable(res):
        foreign = statistics.mean(single[s][f"nll/{t}"] for s in tasks if s != t)
        out.append((foreign - row[f"nll/{t}"]) / (foreign - single[t][f"nll/{t}"]))
    return statistics.mean(out)


GEOMETRY = ["distance_to_sum", "norm_to_mean", "cos_to_mean", "along_own"]
LEGO_VARIANTS = [m[0] for m in MERGES if m[1] == "lego" and m[2] == RANK]


#: a task enters the mean retention only if its own LoRA gains more than this (nats per token) over the base on
#: the validation split (mean over seeds); below it, retention divides by a gain that is noise or negative
MIN_GAIN = 0.02


def own_gain(res: dict, split: str = "val") -> dict[str, float]:
    """Mean over seeds of each task's own-LoRA gain over the base on ``split`` ("val" or "nll": test)."""
    base = res["base_val_nll"] if split == "val" else res["base_heldout_nll"]
    return {t: base[t] - statistics.mean(r[f"{split}/{t}"] for r in res["rows"] if r["merge"] == f"single {t}")
            for t in tasks_of(res)}


def measurable(res: dict) -> list[str]:
    """The tasks whose own LoRA gains more than MIN_GAIN on the validation split (retention is averaged over them)."""
    return [t for t, g in own_gain(res).items() if g > MIN_GAIN]


def pooled(res: dict, row: dict, prefix: str = "nll") -> float:
    """sum_t gain(merged, t) / sum_t gain(own LoRA t, t) over all tasks, same seed, on one split ("nll": test,
    "val"): the share of the tasks' summed gain the merge keeps; well defined while one task's own gain is ~0."""
    base = res["base_heldout_nll"] if prefix == "nll" else res["base_val_nll"]
    own = {r["merge"].removeprefix("single "): r for r in res["rows"]
           if r["seed"] == row["seed"] and r["merge"].startswith("single ")}
    tasks = tasks_of(res)
    return (sum(base[t] - row[f"{prefix}/{t}"] for t in tasks) /
            sum(base[t] - own[t][f"{prefix}/{t}"] for t in tasks))


def aggregate(res: dict) -> dict:
    """Per merge: mean and std over seeds of each task's retention, of the mean retention over the measurable tasks
    (test and validation), of the task-specific share kept and of the geometry; the per-seed mean retention."""
    agg, keep = {}, measurable(res)
    for label, *_ in MERGES:
        rs = [dict(r, specific=specific(res, r),
                   retained_mean=statistics.mean(r[f"retained/{t}"] for t in keep),
                   val_retained_mean=statistics.mean(r[f"val_retained/{t}"] for t in keep),
                   pooled=pooled(res, r), val_pooled=pooled(res, r, "val"))
              for r in res["rows"] if r["merge"] == label]
        if not rs:  # a merge added after these results were written
            continue
        keys = [f"retained/{t}" for t in tasks_of(res)] + ["retained_mean", "val_retained_mean", "specific", "pooled",
                                                         "val_pooled", *GEOMETRY]
        agg[label] = {k: _ms([r[k] for r in rs]) for k in keys}
        agg[label]["per_seed_pooled"] = [r["pooled"] for r in sorted(rs, key=lambda r: r["seed"])]
        agg[label]["per_seed"] = [r["retained_mean"] for r in sorted(rs, key=lambda r: r["seed"])]
    return agg


def _clusters(res: dict, kind: str) -> tuple[float, float, float]:
    """(share of clusters mixing languages, share of units in them, centroid norm / members' mean norm) for
    ``kind`` = "<basis> <cluster_on>", mean over seeds."""
    rows = [r for r in res["rows"] if r["merge"] == f"lego clusters {kind}"]
    return tuple(statistics.mean(r[k] for r in rows)
                 for k in ("mixed_cluster_share", "units_in_mixed_clusters", "centroid_norm_ratio"))


TITLES = {"languages": "Merging three task LoRAs (three languages, held-out retention)",
          "proteins": "Merging three task LoRAs (three protein families, held-out retention)"}
#: what one task is called in the text of each setting
WORD = {"languages": "language", "proteins": "family"}


def word(res: dict) -> tuple[str, str]:
    """(one task, several tasks) in the setting's words: ("language", "languages") or ("family", "families")."""
    w = WORD[res.get("setting", "languages")]
    return w, ("families" if w == "family" else w + "s")


def describe(res: dict) -> str:
    """The setting's paragraph: base model, task data, splits, LoRA training."""
    a, tasks, names = res["args"], tasks_of(res), names_of(res)
    if res.get("setting", "languages") == "languages":
        return ("Tiny LLaMA (hidden 64, 2 layers, character tokens, blocks of 128) trained fully for "
                f"{a['base_steps']} steps on core's English example text ({res['generic_blocks']} blocks): the base. "
                f"Three peft LoRAs (rank {RANK}, alpha {2 * RANK}, attention + MLP) trained from it for {a['steps']} "
                "steps (batch 16) on Hausa, Swahili and Yoruba news text (MasakhaNER 2.0 sentences, "
                "domains/multilingual/data/text). Per language the last 200 lines are the test split, the 200 before "
                "them the validation split (the only split any choice below is made on), the rest training data "
                "(training blocks " + ", ".join(f"{names[t]} {res['blocks'][t]['train']}" for t in tasks) +
                "; validation " + ", ".join(f"{names[t]} {res['blocks'][t]['val']}" for t in tasks) + "; test " +
                ", ".join(f"{names[t]} {res['blocks'][t]['held_out']}" for t in tasks) + "; share of characters "
                "outside the ASCII tokenizer " + ", ".join(f"{names[t]} {100 * res['unk_share'][t]:.1f} %"
                                                            for t in tasks) + ").")
    from report_proteins import describe_proteins

    return describe_proteins(res)


def header(res: dict) -> list[str]:
    v = res["versions"]
    tasks, names = tasks_of(res), names_of(res)
    w, ws = word(res)
    base = res["base_heldout_nll"]
    single = {t: {u: statistics.mean(r[f"nll/{u}"] for r in res["rows"] if r["merge"] == f"single {t}")
                  for u in tasks} for t in tasks}
    cached = res.get("cached", {})
    n_cached = sum(bool(x) for x in cached.values())
    lines = [f"## {TITLES[res.get('setting', 'languages')]}", "",
             f"Command: `{res['command']}` (cpu, torch {v['torch']}, peft {v['peft']}, transformers "
             f"{v['transformers']}, scikit-learn {v['scikit-learn']}, commit {res['commit'][:10]}, "
             f"{res['seconds']:.0f} s wall, {res['cpu_seconds']:.0f} s CPU). Trained models read from the on-disk "
             f"cache (benchmarks/merge/cache.py: keyed by a hash of every training setting, the training data's "
             f"token ids, the package versions and the training code): {n_cached} of {len(cached)} (the base and "
             f"{len(cached) - 1} task LoRAs)" + ("; none was trained in this run" if n_cached == len(cached) else
                                                 "; the rest were trained in this run") + ".", "",
             describe(res), "",
             f"Test NLL (nats per token, mean over seeds) of the base and of each single LoRA on each {w}; "
             "the diagonal is what each task LoRA learned:", "",
             "| model | " + " | ".join(names[t] for t in tasks) + " |", "|---|" + "---:|" * len(tasks),
             "| base | " + " | ".join(f"{base[t]:.3f}" for t in tasks) + " |"]
    for t in tasks:
        lines.append(f"| {names[t]} LoRA | " + " | ".join(f"{single[t][u]:.3f}" for u in tasks) + " |")
    gains = {t: base[t] - single[t][t] for t in tasks}
    cross = {t: statistics.mean(base[t] - single[s][t] for s in tasks if s != t) for t in tasks}
    lines += ["", "Test gain of each task's own LoRA over the base: " +
              ", ".join(f"{names[t]} {gains[t]:.3f}" for t in tasks) + " nats per token; mean gain of the two "
              f"other {ws}' LoRAs on that {w}: " + ", ".join(f"{names[t]} {cross[t]:.3f}" for t in tasks) +
              "."]
    return lines


def table(res: dict, agg: dict) -> list[str]:
    a = res["args"]
    tasks, names = tasks_of(res), names_of(res)
    w, ws = word(res)
    lines = ["", f"Merged at rank {RANK} (the rank of one input) unless the label says otherwise. Retained = (NLL gain "
             f"of the merged LoRA over the base on a {w}) / (gain of that {w}'s own LoRA), on the test split "
             f"unless marked 'val'; mean +- std over {a['seeds']} seeds. '{w}-specific kept' is (F_t - "
             f"NLL_merged) / (F_t - NLL_own LoRA), F_t the mean test NLL on {w} t of the other two {ws}' "
             f"LoRAs, averaged over the {ws} (1 = as good as the {w}'s own LoRA, 0 = no better than a LoRA "
             f"of another {w}). Geometry of the merged update G over all modules (Frobenius; D_t the inputs' "
             "updates, M their mean): 'dist. to sum' = ||G - sum_t D_t|| / ||sum_t D_t|| (weighted sum where the "
             "merge has weights), 'norm / M' = ||G|| / ||M||, 'cos to M', and 'own share' = mean_t <G, D_t> / "
             "||D_t||^2 (about 1 for the sum, 1/3 for the mean, if the updates were orthogonal).", "",
             "| merge | " + " | ".join(f"retained {names[t]}" for t in tasks) +
             f" | retained, mean | retained, mean (val) | {w}-specific kept | dist. to sum | norm / M | cos to M "
             "| own share |", "|---|" + "---:|" * (len(tasks) + 7)]
    for label in (m[0] for m in MERGES if m[0] in agg):
        g = agg[label]
        cells = [f"{g[f'retained/{t}'][0]:.2f} +- {g[f'retained/{t}'][1]:.2f}" for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {g['retained_mean'][0]:.3f} +- "
                     f"{g['retained_mean'][1]:.3f} | {g['val_retained_mean'][0]:.3f} | {g['specific'][0]:.2f} +- "
                     f"{g['specific'][1]:.2f} | " + " | ".join(f"{g[k][0]:.2f}" for k in GEOMETRY) + " |")
    return lines


def verdict(res: dict, agg: dict, label: str) -> tuple[str, bool]:
    """(the sentence comparing LEGO variant ``label`` with linear and TIES at rank RANK on the test split,
    whether it retains more than every one of them on average)."""
    a = res["args"]
    lego = agg[label]["retained_mean"][0]
    others = {k: agg[k]["retained_mean"][0] for k in RIVALS}
    beaten = [k for k, x in others.items() if lego > x]
    not_beaten = [k for k, x in others.items() if lego <= x]
    per_seed = {k: sum(x > y for x, y in zip(agg[label]["per_seed"], agg[k]["per_seed"])) for k in RIVALS}
    from report_update import OURS

    name = ("LoRA-LEGO (the default: k-means on directions, dual reweighting)" if label == LEGO else
            f"LoRA-LEGO as '{label}' (the LEGO variant best on validation" +
            ("; our update-space centroid, not the paper's method)" if label in OURS else ")"))
    text = (f"{name} retains more on average than " + ", ".join(beaten) if beaten else
            f"{name} does not retain more than any of linear and TIES")
    if beaten and not_beaten:
        text += ", but not more than " + ", ".join(not_beaten)
    text = (f"At rank {RANK}: {text} ({lego:.3f} vs " + ", ".join(f"{k} {x:.3f}" for k, x in others.items()) +
            "; LEGO ahead in " + ", ".join(f"{per_seed[k]} of {a['seeds']} seeds against {k}" for k in RIVALS) +
            "). The target (LEGO above linear and TIES at the rank of one input) is "
            f"{'met' if not not_beaten else 'not met'} in this run" +
            ("." if label == LEGO else " with the LEGO variant chosen on validation."))
    pl = {k: agg[k]["retained_mean"][0] for k in PEFT_FACTOR_MERGES if k in agg}
    if pl:
        every = "both" if len(pl) == 2 else "all of them"
        text += (" For reference, peft's own factor-wise merges (`add_weighted_adapter` with combination_type "
                 "linear or ties on equal-rank LoRAs: the A's and the B's merged separately; not the target's "
                 "baselines, which merge the updates) retain " + ", ".join(f"{x:.3f} ({k})" for k, x in pl.items())
                 + "; LEGO is " + (f"ahead of {every}." if all(lego > x for x in pl.values()) else
                                   f"behind {every}." if all(lego <= x for x in pl.values()) else "between them."))
    return text, not not_beaten


def best_on_val(agg: dict) -> str:
    """The LEGO variant (at rank RANK) with the highest mean retention on the validation split."""
    return max(variants(agg), key=lambda k: agg[k]["val_retained_mean"][0])


def variants(agg: dict) -> list[str]:
    """The LEGO variants at rank RANK that ``agg`` holds (results written before a variant was added lack it)."""
    return [k for k in LEGO_VARIANTS if k in agg]


def readers(agg: dict) -> tuple:
    """(test retention, validation retention, geometry field) of a merge, means over seeds, as functions of
    the merge's key (and the field's name)."""
    return (lambda k: agg[k]["retained_mean"][0], lambda k: agg[k]["val_retained_mean"][0],
            lambda k, m: agg[k][m][0])


def write_md(res: dict) -> str:
    agg = aggregate(res)
    r, val, geo = readers(agg)
    lines = header(res) + table(res, agg)
    lego = r(LEGO)
    lines += ["", verdict(res, agg, LEGO)[0]]
    best = best_on_val(agg)
    lines += ["", "Choice of a LEGO variant (validation split only): " + ", ".join(
        f"{k} {val(k):.3f}" for k in sorted(variants(agg), key=val, reverse=True)) + f". Best on validation: {best}"
        + (" = the default." if best == LEGO else f"; the default is {LEGO} ({val(LEGO):.3f}).")]
    if best != LEGO:
        lines += ["", verdict(res, agg, best)[0]]
    mix = {(basis, on): _clusters(res, f"{basis} {on}") for basis in ("raw", "svd") for on in ("directions", "units")}
    raw_u, svd_d, svd_u = "lego on raw units (dual reweighting)", "lego svd units (dual reweighting)", \
        "lego svd units on raw units (dual reweighting)"
    lines += ["", f"Raw units vs directions: k-means on the raw units (the other reading of the paper; the default "
              f"before this run) retains {r(raw_u):.3f} (validation {val(raw_u):.3f}), on directions {lego:.3f} "
              f"(validation {val(LEGO):.3f}); with the largest-magnitude norm (on directions: the whole recipe of the "
              f"re-implementation we read) {r('lego (dual reweighting, max norm)'):.3f}. Clusters mixing languages: "
              f"{100 * mix['raw', 'directions'][0]:.0f} % on directions, {100 * mix['raw', 'units'][0]:.0f} % on raw "
              "units."]
    lines += ["", "SVD units (the identifiability hypothesis): re-factoring each LoRA by its SVD before clustering "
              f"changes the share of clusters that mix languages from {100 * mix['raw', 'directions'][0]:.0f} % to "
              f"{100 * mix['svd', 'directions'][0]:.0f} % on directions and from {100 * mix['raw', 'units'][0]:.0f} % "
              f"to {100 * mix['svd', 'units'][0]:.0f} % on raw units; retention goes from {lego:.3f} to {r(svd_d):.3f} "
              f"on directions (validation {val(LEGO):.3f} -> {val(svd_d):.3f}) and from {r(raw_u):.3f} to "
              f"{r(svd_u):.3f} on raw units (validation {val(raw_u):.3f} -> {val(svd_u):.3f}). On raw units the SVD "
              "units are ordered by size: k-means gives the largest ones a cluster each and pools the small ones "
              f"(centroid norm / members' mean norm in multi-member clusters {mix['svd', 'units'][2]:.2f}, against "
              f"{mix['raw', 'units'][2]:.2f} for trained units), so the merge keeps each language's top directions at "
              f"full size: its update is {geo(svd_u, 'norm_to_mean'):.2f} times the mean update's norm and carries "
              f"{geo(svd_u, 'along_own'):.2f} of each task's own update (trained units: "
              f"{geo(raw_u, 'norm_to_mean'):.2f}, {geo(raw_u, 'along_own'):.2f}), i.e. it moves towards the plain sum, "
              f"which retains {r('linear (sum)'):.3f}. On directions the SVD merge's update is "
              f"{geo(svd_d, 'norm_to_mean'):.2f} times M at cos {geo(svd_d, 'cos_to_mean'):.2f} (trained units: "
              f"{geo(LEGO, 'norm_to_mean'):.2f}, {geo(LEGO, 'cos_to_mean'):.2f}). "
              + ("The SVD basis retains more than the trained units on validation in both clusterings, "
                 if val(svd_d) > val(LEGO) and val(svd_u) > val(raw_u) else
                 "The SVD basis does not retain more than the trained units on validation in both clusterings, so "
                 "non-identifiable units are not what costs LEGO here; ") +
              "it stays an option (basis='svd')" + (" and is not the default." if best != svd_d else ".")]
    w3, w2, w1 = "linear (mean)", "linear (weights 0.5, diagnostic)", "linear (sum)"
    lin = min((w3, w2, w1), key=lambda k: abs(geo(k, "norm_to_mean") - geo(LEGO, "norm_to_mean")))
    lines += ["", "Why LEGO loses, in numbers. Retention depends strongly on the size of the merged update: the same "
              f"rank-{RANK} truncated SVD of the summed update retains {r(w3):.3f} at weight 1/3 (norm / M "
              f"{geo(w3, 'norm_to_mean'):.2f}), {r(w2):.3f} at 1/2 ({geo(w2, 'norm_to_mean'):.2f}) and {r(w1):.3f} at "
              f"1 ({geo(w1, 'norm_to_mean'):.2f}), always at cos {geo(w3, 'cos_to_mean'):.2f} to the mean update. "
              f"LEGO's update is {geo(LEGO, 'norm_to_mean'):.2f} times M in size, nearest to {lin} "
              f"({geo(lin, 'norm_to_mean'):.2f}, retaining {r(lin):.3f}), but points less along the mean update (cos "
              f"{geo(LEGO, 'cos_to_mean'):.2f} against {geo(w3, 'cos_to_mean'):.2f}): at k = {RANK}, "
              f"{100 * mix['raw', 'directions'][0]:.0f} % of its clusters mix languages, and a mixed cluster's "
              "rank-1 update (mean of the B halves) x (mean of the A halves) adds cross terms B_i A_j between "
              f"languages that none of the inputs has. The truncated SVD is the best rank-{RANK} approximation "
              "of the (scaled) summed update "
              "(Eckart-Young), so a rank-k merge of about the same size that stays further from that update "
              f"retains less: LEGO {lego:.3f} against {r(lin):.3f}. Without any reweighting LEGO's update is "
              f"{geo('lego (no reweighting)', 'norm_to_mean'):.2f} times M at cos "
              f"{geo('lego (no reweighting)', 'cos_to_mean'):.2f} and retains {r('lego (no reweighting)'):.3f}; at "
              f"rank {3 * RANK} (every unit its own cluster: sqrt({RANK}/{3 * RANK}) times the exact sum, cos "
              f"{geo('lego (rank 24, dual reweighting)', 'cos_to_mean'):.2f}) it retains "
              f"{r('lego (rank 24, dual reweighting)'):.3f}, against {r('cat (rank 24, the exact sum)'):.3f} for the "
              "exact sum (cat). The dual reweighting formulas are our reading of the paper's description (see "
              "core/merge/lego.py), not verified against its text; no official code was available."]
    from report_update import update_paragraph

    lines += ["", update_paragraph(res, agg), ""]
    return "\n".join(lines)



def setting_stats(res: dict, on: list[str] | None = None) -> dict:
    """Mean over the tasks ``on`` (default: all) of the own LoRA's test gain and of the other tasks' LoRAs' test
    gain on them, and the share ``cross / own`` (how much the tasks share)."""
    tasks, base = tasks_of(res), res["base_heldout_nll"]
    on = on or tasks
    single = {t: {u: statistics.mean(r[f"nll/{u}"] for r in res["rows"] if r["merge"] == f"single {t}")
                  for u in tasks} for t in tasks}
    own = statistics.mean(base[t] - single[t][t] for t in on)
    cross = statistics.mean(base[t] - single[s][t] for t in on for s in tasks if s != t)
    return {"own": own, "cross": cross, "shared": cross / own}


def summary(settings: dict[str, dict]) -> str:
    """The two settings side by side: what the tasks share, retention per method, whether the target is met."""
    from report_proteins import nll_change

    aggs = {k: aggregate(res) for k, res in settings.items()}
    cols = ["lego (dual reweighting)", "lego (no reweighting)", "lego update centroid (dual reweighting)",
            "linear (sum)", "linear (mean)", "ties (density 0.5)", "dare (density 0.5)"]
    lines = ["## Merging three task LoRAs: both settings side by side", "",
             f"Test retention (mean over seeds) at rank {RANK}, the rank of one input; 'LEGO chosen on val' is the "
             "LEGO variant with the best validation retention in that setting; retention is averaged over the "
             f"'tasks in the mean', those whose own LoRA gains more than {MIN_GAIN} nats per token on validation; "
             "'other LoRAs' gain "
             "/ own' is the mean test gain over the base of the two other tasks' LoRAs on those tasks, divided by the "
             "mean gain of the task's own LoRA (how much the tasks share: 1 = everything, negative = they conflict). "
             "Sections below give every number, the setup and the reasons.", "",
             "| setting | own LoRA test gain per task (nats/token) | tasks in the mean | other LoRAs' gain / own | " +
             " | ".join(cols) +
             " | LEGO chosen on val | target met (default LEGO, the paper's centroid) | target met (LEGO chosen on "
             "val) |",
             "|---|---|---|" + "---:|" * (1 + len(cols)) + "---|---|---|"]
    met = {}
    for k, res in settings.items():
        agg, keep = aggs[k], measurable(res)
        st, gain = setting_stats(res, keep), own_gain(res, "nll")
        best = best_on_val(agg)
        met[k] = (verdict(res, agg, LEGO)[1], verdict(res, agg, best)[1])
        lines.append(f"| {k} | " + ", ".join(f"{names_of(res)[t]} {gain[t]:.3f}" for t in tasks_of(res)) +
                     f" | {', '.join(names_of(res)[t] for t in keep)} | {st['shared']:.2f} | " +
                     " | ".join(f"{agg[c]['retained_mean'][0]:.3f}" if c in agg else "not run" for c in cols) +
                     f" | {best} {agg[best]['retained_mean'][0]:.3f} | "
                     f"{'yes' if met[k][0] else 'no'} | {'yes' if met[k][1] else 'no'} |")
    both = [k for k in settings if met[k][0]]
    both_val = [k for k in settings if met[k][1]]
    lines += ["", "The target (LEGO at the rank of one input retains more than linear, both the sum and the mean, and "
              "TIES) is met by the default LEGO (the paper's centroid) in " + (
                  " and ".join(f"the {k} setting" for k in both) if both else "neither setting") +
              " and by the LEGO variant chosen on validation in " + (
                  " and ".join(f"the {k} setting" for k in both_val) if both_val else "neither setting") + "."]
    for k, res in settings.items():
        out = [t for t in tasks_of(res) if t not in measurable(res)]
        if not out:
            continue
        best = best_on_val(aggs[k])
        worse = {m: [t for t in out if nll_change(res, m, t) > 0] for m in dict.fromkeys((LEGO, best, *RIVALS))}
        lines += ["", f"In the {k} setting the retention is that of " + ", ".join(measurable(res)) + " alone; on the "
                  "families left out (" + ", ".join(out) + ") these merges leave at least one worse than the base on "
                  "test: " + (", ".join(m for m, v in worse.items() if v) or "none") + "; not: " +
                  (", ".join(m for m, v in worse.items() if not v) or "none") + ". Pooled over all its tasks (sum "
                  "of the merged test gains / sum of the own LoRAs' test gains): " + ", ".join(
                      f"{m} {aggs[k][m]['pooled'][0]:.3f}" for m in worse) + "."]
    lines += [""]
    return "\n".join(lines)


def write_md_all() -> str:
    """results.md: the side-by-side summary, then the language section, then the protein section (when the
    protein setting has been run)."""
    lang = json.loads((HERE / "results.json").read_text())
    prot_path = HERE / "results_proteins.json"
    if not prot_path.is_file():
        return write_md(lang)
    prot = json.loads(prot_path.read_text())
    from report_proteins import protein_md

    return summary({"languages": lang, "proteins": prot}) + "\n" + write_md(lang) + "\n" + protein_md(prot)


if __name__ == "__main__":
    (HERE / "results.md").write_text(write_md_all())
