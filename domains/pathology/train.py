"""k-fold cross-validated training of the MIL regressor on stored tile features.

Labels: a CSV ``slide_id,case_id,target[,site]`` (target = sTIL % in 0..100). Folds are grouped
by ``case_id`` (patient-level, CLAM's splits) or ``site`` (centre-level, ECTIL's TCGA splits):
all slides of a group fall in one test fold (``sklearn.model_selection.GroupKFold``). Inside
each fold, a grouped share ``val_frac`` of the training slides is held out to choose the best
step (lowest validation MSE, checked every ``eval_every`` steps; with ``val_frac`` 0, the default, all
training slides are fitted and the step with the lowest training MSE is kept); that fold model is saved as
``fold_<k>/model.safetensors`` + ``model.json`` (architecture, feature standardisation is in the
weights) and its out-of-fold predictions go to ``predictions.csv`` (``slide_id,fold,pred,target,case_id``,
in %; the case lets ``evaluate`` and the summary report per-case metrics). Training runs through the core
loop ``adaptome.core.train.loop.fit``. A fold model records
the fingerprint of what made it (``train_identity``: the training options, the feature width and
encoder, the label file's SHA-256 and each feature file's size and time) and is reused on re-run
only when that fingerprint is the same; ``stages.train`` decides for a whole run folder (reuse,
retrain saying why, or refuse naming ``--overwrite``). ``shuffle_labels`` permutes the targets across slides first: the
negative control, which must score R^2 near zero.

Not covered: nested CV for hyper-parameters, class-balanced sampling, survival targets.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from adaptome.core.atomic import atomic_path
from adaptome.core.train.identity import fingerprint
from adaptome.domains.pathology.errors import PathologyError
from adaptome.domains.pathology.extract import read_features
from adaptome.domains.pathology.made_by import content_stamp, identity, plain
from adaptome.domains.pathology.mil import MILRegressor, collate_bags, mil_loss
from adaptome.domains.pathology.pipeline import write_json


def read_labels(path: str | os.PathLike) -> list[dict]:
    """The rows of a label CSV that carry a target (``read_label_sheet``); rows with an empty target are
    left out."""
    return read_label_sheet(path)[0]


def read_label_sheet(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Rows of a label CSV ``slide_id,case_id,target[,site]`` that carry a target, and the ids of the slides
    whose target cell is empty (a case the pathologist did not score: left out of training, to be listed);
    errors name the file and line.

    Ids are stripped of surrounding spaces. Refused, naming the line: an empty ``slide_id`` or
    ``case_id``, a target that is not a number (``NA``, ``nan``: leave the cell empty instead) or outside
    0..100, a slide id listed twice (it would be trained on twice, or fall in a training and a test fold at
    once), a sheet without any target, and a table whose targets all lie within 0..1 (fractions, not %:
    they would be read as sTIL below 1 %)."""
    path = Path(path)
    if not path.is_file():
        raise PathologyError(f"{path}: label CSV not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = cols
        missing = [c for c in ("slide_id", "case_id", "target") if c not in cols]
        if missing:
            raise PathologyError(f"{path}: label CSV lacks column(s) {missing} (has {cols})")
        rows, no_target, line_of = [], [], {}
        for i, r in enumerate(reader, start=2):
            sid, case = (r["slide_id"] or "").strip(), (r["case_id"] or "").strip()
            if not sid or not case:
                raise PathologyError(f"{path}: line {i}: empty {'slide_id' if not sid else 'case_id'}")
            if sid in line_of:
                raise PathologyError(f"{path}: line {i}: slide {sid!r} is listed again (first on line "
                                     f"{line_of[sid]}); give each slide one row")
            line_of[sid] = i
            t = parse_target(r["target"], path, i)
            if t is None:
                no_target.append(sid)
                continue
            rows.append({"slide_id": sid, "case_id": case, "target": t, "site": (r.get("site") or "").strip()})
    check_targets(rows, no_target, path)
    return rows, no_target


def parse_target(cell: str | None, path, line: int) -> float | None:
    """An sTIL % cell: ``None`` when empty (no score), else a number in 0..100; anything else is an error
    naming the file and line, and so is a row without the target field at all (``cell`` None from
    ``csv.DictReader``: a line cut short is malformed, not a slide without a score)."""
    if cell is None:
        raise PathologyError(f"{path}: line {line}: fewer fields than the header (no target field); give every "
                             "row each column, with an empty target cell for a slide without a score")
    if not cell.strip():
        return None
    try:
        t = float(cell)
    except (TypeError, ValueError):
        t = float("nan")
    if math.isnan(t):
        raise PathologyError(f"{path}: line {line}: target {cell!r} is not a number (leave the cell empty for a "
                             "slide without a score: it is left out and listed)")
    if not 0.0 <= t <= 100.0:
        raise PathologyError(f"{path}: line {line}: target {t} outside 0..100 (sTIL %)")
    return t


def check_targets(rows: list[dict], no_target: list[str], path) -> None:
    """Refuse a sheet without any target, and one whose targets all lie within 0..1 (fractions)."""
    if not rows:
        raise PathologyError(f"{path}: label CSV has no slide with a target"
                             + (f" ({len(no_target)} rows with an empty target)" if no_target else " (no rows)"))
    top = max(r["target"] for r in rows)
    if len(rows) > 1 and 0.0 < top <= 1.0:
        raise PathologyError(f"{path}: every target lies within 0..1 (largest {top:g}): fractions, not the sTIL % "
                             f"the column holds; multiply them by 100")


def _case_keyed_hint(fdir: Path, missing: list[str]) -> str:
    """When the labelled ids without a feature file are TCGA case ids and the folder holds feature files
    named by slide barcodes of those cases (a case-level sheet against slide files), a sentence saying so
    and how to join them; else ``""``."""
    from adaptome.domains.pathology.labels import case_of

    cases = [m for m in missing if case_of(m) == m]
    if not cases:
        return ""
    by_case: dict[str, list[str]] = {}
    for p in sorted(fdir.glob("*.h5")):
        by_case.setdefault(case_of(p.stem) or "", []).append(p.stem)
    hit = next((c for c in cases if by_case.get(c)), None)
    if hit is None:
        return ""
    return (f"; {len(cases)} labelled slide id(s) are TCGA case ids, e.g. {hit!r}, and the feature files of their "
            f"slides carry slide barcodes ({', '.join(by_case[hit][:3])}): write one row per slide with "
            f"'adaptome pathology labels <your case_id,target sheet> --slides <slide folder> --out labels.csv'")


def load_bags(features_dir: str | os.PathLike, slide_ids: list[str]) -> dict[str, torch.Tensor]:
    """Feature bags (N x D float32) of the given slides from ``<features_dir>/<slide_id>.h5``."""
    out = {}
    missing = [s for s in slide_ids if not (Path(features_dir) / f"{s}.h5").is_file()]
    if missing:
        raise PathologyError(f"{features_dir}: no feature file for {len(missing)} labelled slide(s), "
                             f"e.g. {missing[:3]}")
    for s in slide_ids:
        path = Path(features_dir) / f"{s}.h5"
        feats, _, _ = read_features(path)
        if len(feats) == 0:
            raise PathologyError(f"{path}: no tiles (nothing passed the tissue filter)")
        first = next(iter(out.items()), None)
        if first is not None and feats.shape[1] != first[1].shape[1]:
            raise PathologyError(f"{path}: {feats.shape[1]}-wide features, but {first[0]}.h5 has "
                                 f"{first[1].shape[1]}; extract every slide with the same encoder")
        out[s] = torch.from_numpy(feats)
    return out


#: the options of ``train_cv`` that shape the fold models (all of them are in a run's fingerprint)
TRAIN_OPTIONS = ("k", "group_by", "aggregation", "hidden", "attn_hidden", "dropout", "max_steps", "batch_size", "lr",
                 "weight_decay", "val_frac", "eval_every", "seed", "shuffle_labels", "tile_dropout")


def feature_width(path: str | os.PathLike) -> tuple[int, str]:
    """(D, encoder name) of a feature file, read from its header only."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f["features"].shape[1]), str(f.attrs.get("encoder", ""))
    except (OSError, KeyError, IndexError) as e:
        raise PathologyError(f"{path}: not a feature file ({e})") from None


def train_identity(features_dir: str | os.PathLike, labels_csv: str | os.PathLike, rows: list[dict],
                   options: dict) -> dict:
    """What makes a CV run (``made_by.identity``): ``options`` (``TRAIN_OPTIONS``) plus the feature
    width and encoder as params; the label file's content and each labelled slide's feature file
    (size and time) as inputs. Features of different widths are an error naming the file."""
    from adaptome.domains.pathology.made_by import file_stamp

    fdir = Path(features_dir)
    missing = [r["slide_id"] for r in rows if not (fdir / f"{r['slide_id']}.h5").is_file()]
    if missing:
        raise PathologyError(f"{fdir}: no feature file for {len(missing)} of the {len(rows)} labelled slide(s), e.g. "
                             f"{missing[:3]}; extract them, or give a label CSV of the slides that have features"
                             + _case_keyed_hint(fdir, missing))
    width = enc = None
    stamps = {}
    for r in rows:
        path = fdir / f"{r['slide_id']}.h5"
        w, e = feature_width(path)
        if width is None:
            width, enc, first = w, e, path.name
        elif w != width:
            raise PathologyError(f"{path}: {w}-wide features ({e or 'unknown encoder'}), but {first} has {width}; "
                                 f"extract every slide with the same encoder")
        st = file_stamp(path)
        stamps[r["slide_id"]] = f"{st['size']} bytes, mtime {st['mtime_ns']}"
    return identity({**options, "feature_width": width, "encoder": enc},
                    {"labels": content_stamp(labels_csv), "features": stamps})


class _BagDataset(torch.utils.data.Dataset):
    """Training bags; with ``tile_dropout`` > 0 each draw keeps a random subset of the bag's tiles (each
    tile dropped with that probability, at least one kept; torch's global RNG, seeded by the loop)."""

    def __init__(self, bags: list[torch.Tensor], targets: list[float], tile_dropout: float = 0.0):
        self.bags, self.targets, self.tile_dropout = bags, targets, tile_dropout

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i):
        bag = self.bags[i]
        if self.tile_dropout > 0 and len(bag) > 1:
            keep = torch.rand(len(bag)) >= self.tile_dropout
            keep[torch.randint(len(bag), (1,))] = True
            bag = bag[keep]  # (N, D) -> (N', D)
        return bag, self.targets[i] / 100.0


@torch.no_grad()
def predict(model: MILRegressor, bags: list[torch.Tensor]) -> np.ndarray:
    """Slide scores in % for each bag."""
    model.eval()
    dev = next(model.parameters()).device
    return np.array([float(model(b.to(dev)).slide[0]) * 100.0 for b in bags])


def save_model(model: MILRegressor, out_dir: str | os.PathLike, meta: dict) -> None:
    """``model.safetensors`` + ``model.json`` (constructor arguments and metadata)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:  # model.json first: the weights mark the model done
        save_file(sd, str(tmp))
        (out / "model.json").write_text(json.dumps(plain(meta), indent=2, allow_nan=False), encoding="utf-8")


def load_model(model_dir: str | os.PathLike) -> MILRegressor:
    """A saved fold model; a missing or mismatched file is an error naming it."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    if not (d / "model.json").is_file() or not (d / "model.safetensors").is_file():
        raise PathologyError(f"{d}: not a MIL model folder (needs model.json and model.safetensors)")
    meta = json.loads((d / "model.json").read_text(encoding="utf-8"))
    model = MILRegressor(meta["in_dim"], meta["hidden"], meta["attn_hidden"], meta["aggregation"], meta["dropout"])
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    return model.eval()


def check_groups(rows: list[dict], k: int, group_by: str, source: str | os.PathLike = "labels") -> None:
    """Refuse folds that cannot be what ``group_by`` says: an unknown column, slides of one TCGA patient
    (slide barcodes ``TCGA-<site>-<patient>-...``) under several ``case_id`` values (the patient's slides could
    fall in a training and a test fold), slides without a ``site``
    under ``group_by`` site (they would each fall back to a group of their own case, so the
    centre-level CV would silently be a patient-level one), a case whose slides carry several ``site`` values
    under ``group_by`` site (its slides would fall in different folds: the patient in training and in test),
    fewer groups than ``k``."""
    if group_by not in ("case_id", "site"):
        raise PathologyError(f"group_by must be 'case_id' or 'site', got {group_by!r}")
    no_site = [r["slide_id"] for r in rows if not r[group_by]]
    if no_site:
        raise PathologyError(f"{source}: {len(no_site)} of {len(rows)} labelled slides have no {group_by} "
                             f"(e.g. {no_site[:3]}); fill the label CSV's {group_by} column or choose another "
                             f"--group-by")
    from adaptome.domains.pathology.labels import case_of

    ids_of: dict[str, dict[str, str]] = {}  # TCGA patient (slide barcode) -> case_id -> first slide
    for r in rows:
        patient = case_of(r["slide_id"])
        if patient and patient != r["slide_id"]:
            ids_of.setdefault(patient, {}).setdefault(r["case_id"], r["slide_id"])
    split = {p: g for p, g in ids_of.items() if len(g) > 1}
    if split:
        patient, g = next(iter(split.items()))
        where = ", ".join(f"{sid} as {c!r}" for c, sid in g.items())
        raise PathologyError(f"{source}: {len(split)} TCGA patient(s) have slides under several case_id values, e.g. "
                             f"{patient} ({where}); the folds group by case_id, so the patient could be in training "
                             f"and in test; give the slides of a patient one case_id (the barcode's first three "
                             f"fields, as 'adaptome pathology labels' writes)")
    if group_by != "case_id":
        groups_of: dict[str, dict[str, str]] = {}
        for r in rows:
            groups_of.setdefault(r["case_id"], {}).setdefault(r[group_by], r["slide_id"])
        split = {c: g for c, g in groups_of.items() if len(g) > 1}
        if split:
            case, g = next(iter(split.items()))
            where = ", ".join(f"{sid} at {v!r}" for v, sid in g.items())
            raise PathologyError(f"{source}: {len(split)} case(s) have slides under several {group_by} values, e.g. "
                                 f"case {case!r} ({where}); --group-by {group_by} would put them in different folds, "
                                 f"the patient in training and in test; give each case one {group_by}, or "
                                 f"--group-by case_id")
    n = len({r[group_by] for r in rows})
    if n < k:
        raise PathologyError(f"{source}: {k}-fold CV needs at least {k} distinct {group_by} values, found {n}")


def make_folds(rows: list[dict], k: int, group_by: str, seed: int) -> list[np.ndarray]:
    """Test indices per fold, grouped by ``case_id`` or ``site`` (groups shuffled by ``seed``);
    ``check_groups`` refuses what cannot be grouped so."""
    from sklearn.model_selection import GroupKFold

    check_groups(rows, k, group_by)
    groups = np.array([r[group_by] for r in rows])
    uniq = np.unique(groups)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    gid = perm[np.searchsorted(uniq, groups)]  # shuffle group order so folds are not sorted by id
    return [test for _, test in GroupKFold(n_splits=k).split(np.zeros(len(rows)), groups=gid)]


def feature_recipe(fattrs: dict) -> dict:
    """The feature recipe a model records (``model.json`` ``features``) from a feature file's attributes: each
    of ``score.RECIPE_KEYS`` the file holds (``encoder_options`` as JSON: the encoder's options in force at
    extraction, which ``score`` re-creates), and whether the tiles were bounded by ROIs (``roi``,
    ``roi_classes``). One list: a key ``score`` compares is a key ``train`` records."""
    from adaptome.domains.pathology.score import RECIPE_KEYS

    recipe = {k: (v.item() if hasattr(v, "item") else v) for k, v in fattrs.items()
              if k in (*RECIPE_KEYS, "roi", "roi_classes") and k != "encoder_options"}
    if "encoder_options" in fattrs:
        recipe["encoder_options"] = json.loads(str(fattrs["encoder_options"]))
    return recipe


def train_cv(features_dir: str | os.PathLike, labels_csv: str | os.PathLike, out_dir: str | os.PathLike,
             k: int = 5, group_by: str = "case_id", aggregation: str = "ratio", hidden: int = 128,
             attn_hidden: int = 64, dropout: float = 0.1, max_steps: int = 300, batch_size: int = 8,
             lr: float = 3e-3, weight_decay: float = 1e-4, val_frac: float = 0.0, eval_every: int = 25,
             seed: int = 0, shuffle_labels: bool = False, tile_dropout: float = 0.0, progress: bool = False,
             made_by: dict | None = None) -> dict:
    """Cross-validate; returns ``{"folds": [...], "predictions": path, "best_fold": k}`` (each fold's
    info says whether its model was ``reused``). ``made_by``: the run's ``train_identity`` (computed
    here when not given); a fold model is reused only when it was made by the same."""
    from adaptome.core.train.loop import fit

    rows = read_labels(labels_csv)
    if made_by is None:
        opts = dict(k=k, group_by=group_by, aggregation=aggregation, hidden=hidden, attn_hidden=attn_hidden,
                    dropout=dropout, max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                    val_frac=val_frac, eval_every=eval_every, seed=seed, shuffle_labels=shuffle_labels,
                    tile_dropout=tile_dropout)
        made_by = train_identity(features_dir, labels_csv, rows, opts)
    run_fp = fingerprint(made_by)
    if shuffle_labels:
        perm = np.random.default_rng(seed + 1).permutation(len(rows))
        targets = [rows[i]["target"] for i in perm]
        rows = [{**r, "target": t} for r, t in zip(rows, targets)]
    folds = make_folds(rows, k, group_by, seed)
    splits = [_fold_split(rows, test_idx, val_frac, group_by, seed + f) for f, test_idx in enumerate(folds)]
    check_batch(splits, batch_size, labels_csv)
    bags = load_bags(features_dir, [r["slide_id"] for r in rows])
    _, _, fattrs = read_features(Path(features_dir) / f"{rows[0]['slide_id']}.h5")
    recipe = feature_recipe(fattrs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_preds, fold_info = [], []
    for f, (test_idx, (val_idx, fit_idx)) in enumerate(zip(folds, splits)):
        fdir = out / f"fold_{f}"
        if _made_by(fdir) == run_fp:
            model = load_model(fdir)
            info = {**json.loads((fdir / "model.json").read_text())["fold"], "reused": True}
        else:
            loop_kw = dict(max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                           seed=seed + f, eval_every=eval_every, progress=progress)
            model, info = _train_fold(bags, rows, fit_idx, val_idx, fdir, aggregation, hidden, attn_hidden,
                                      dropout, tile_dropout, fit, loop_kw)
            info.update(fold=f, n_train=len(fit_idx), n_val=len(val_idx), n_test=len(test_idx))
            save_model(model, fdir, {"in_dim": int(model.feat_mean.numel()), "hidden": hidden,
                                     "attn_hidden": attn_hidden, "aggregation": aggregation,
                                     "dropout": dropout, "features": recipe, "fold": info, "made_by": run_fp})
            info = {**info, "reused": False}
        preds = predict(model, [bags[rows[i]["slide_id"]] for i in test_idx])
        for i, p in zip(test_idx, preds):
            all_preds.append({"slide_id": rows[i]["slide_id"], "fold": f, "pred": round(float(p), 4),
                              "target": rows[i]["target"], "case_id": rows[i]["case_id"]})
        fold_info.append(info)
    pred_csv = out / "predictions.csv"
    with atomic_path(pred_csv) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["slide_id", "fold", "pred", "target", "case_id"])
        w.writeheader()
        w.writerows(all_preds)
    best = min(fold_info, key=lambda d: d["best_val_mse"])["fold"]
    summary = {"folds": fold_info, "predictions": str(pred_csv), "best_fold": best}
    write_json(out / "cv_summary.json", summary)
    return summary


def _made_by(fold_dir: Path) -> str | None:
    """The fingerprint a saved fold model records (``None``: no model, or one without a record)."""
    if not (fold_dir / "model.safetensors").is_file() or not (fold_dir / "model.json").is_file():
        return None
    try:
        return json.loads((fold_dir / "model.json").read_text(encoding="utf-8")).get("made_by")
    except ValueError:
        return None


def _fold_split(rows, test_idx, val_frac, group_by, seed):
    """(validation, fitted) slide indices of the fold whose test slides are ``test_idx``."""
    test_set = set(test_idx.tolist())
    train_idx = np.array([i for i in range(len(rows)) if i not in test_set])
    return _split_val(rows, train_idx, val_frac, group_by, seed)


def check_batch(splits, batch_size: int, source: str | os.PathLike) -> None:
    """Refuse, before any fold trains, a fold with fewer fitted slides than one global batch (``batch_size``
    x the launched processes): the core loop's own error names ``train.batch_size``, a key this command
    does not have."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    n, f = min((len(fit), f) for f, (_, fit) in enumerate(splits))
    if n < batch_size * world:
        procs = f" x {world} processes" if world > 1 else ""
        raise PathologyError(f"{source}: fold {f} trains on {n} slides, fewer than one batch (batch_size "
                             f"{batch_size}{procs}); add labelled slides or lower it: --set batch_size="
                             f"{max(1, n // world)}")


def _split_val(rows, train_idx, val_frac, group_by, seed):
    groups = np.array([rows[i][group_by] for i in train_idx])
    uniq = np.unique(groups)
    n_val = max(1, int(round(val_frac * len(uniq)))) if val_frac > 0 and len(uniq) > 1 else 0
    val_groups = set(np.random.default_rng(seed).choice(uniq, size=n_val, replace=False).tolist()) if n_val else set()
    is_val = np.array([g in val_groups for g in groups], bool)
    return train_idx[is_val], train_idx[~is_val]


def _train_fold(bags, rows, fit_idx, val_idx, fdir, aggregation, hidden, attn_hidden, dropout, tile_dropout, fit,
                train_kw):
    train_bags = [bags[rows[i]["slide_id"]] for i in fit_idx]
    allf = torch.cat(train_bags)
    torch.manual_seed(train_kw["seed"])  # the init depends on the fold's seed only, not on earlier RNG use
    model = MILRegressor(allf.shape[1], hidden, attn_hidden, aggregation, dropout,
                         feature_mean=allf.mean(0), feature_std=allf.std(0).clamp(min=1e-6))
    ds = _BagDataset(train_bags, [rows[i]["target"] for i in fit_idx], tile_dropout)
    val_bags = [bags[rows[i]["slide_id"]] for i in val_idx] or train_bags
    val_y = np.array([rows[i]["target"] for i in val_idx]) if len(val_idx) else np.array(ds.targets)
    best = {"mse": float("inf"), "step": 0, "state": None}
    state = {"calls": 0}

    def eval_fn(m):
        state["calls"] += 1
        mse = float(np.mean((predict(m, val_bags) - val_y) ** 2))
        if mse < best["mse"]:
            best.update(mse=mse, step=state["calls"], state={k: v.detach().clone() for k, v in m.state_dict().items()})
        m.train()
        return {"val_mse": mse}

    res = fit(model, ds, loss_fn=mil_loss, collate_fn=collate_bags, eval_fn=eval_fn, output_dir=str(fdir / "train"),
              schedule="cosine", max_grad_norm=0.5, log_every=25, resume=False, save_every=0, **train_kw)
    model = res.model.cpu()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    first = res.history[0]["loss"] if res.history and "loss" in res.history[0] else float("nan")
    last = [h["loss"] for h in res.history if "loss" in h]
    return model.eval(), {"best_val_mse": best["mse"], "best_eval_index": best["step"],
                          "first_loss": first, "last_loss": last[-1] if last else float("nan")}
