"""MIL regressor numerics; end-to-end recovery of the planted sTIL % on held-out synthetic slides."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptome.core import evaluation as ev
from adaptome.domains.pathology.mil import MILRegressor, collate_bags, mil_loss, pad_bags


def test_mean_aggregation_is_mean_of_sigmoid_tile_scores():
    torch.manual_seed(0)
    m = MILRegressor(6, hidden=8, aggregation="mean", dropout=0.0).eval()
    x = torch.randn(5, 6)
    out = m(x)
    h = torch.relu(x @ m.post[0].weight.T + m.post[0].bias)  # (N, D) @ (D, H) -> (N, H)
    s = torch.sigmoid(h @ m.head[1].weight.T + m.head[1].bias).squeeze(-1)  # (N, H) @ (H, 1) -> (N,)
    assert torch.allclose(out.tiles[0], s, atol=1e-6)
    assert torch.allclose(out.slide[0], s.mean(), atol=1e-6)


def test_gated_attention_formula_and_padding_invariance():
    torch.manual_seed(0)
    m = MILRegressor(6, hidden=8, attn_hidden=4, aggregation="attention", dropout=0.0).eval()
    a, b = torch.randn(5, 6), torch.randn(3, 6)
    h = torch.relu(a @ m.post[0].weight.T + m.post[0].bias)
    gate = torch.tanh(m.attn_v(h)) * torch.sigmoid(m.attn_u(h))  # Ilse et al. eq. 9
    w = torch.softmax(m.attn_w(gate).squeeze(-1), 0)
    out_a = m(a)
    assert torch.allclose(out_a.attention[0], w, atol=1e-6)
    assert torch.allclose(out_a.slide[0], (w * out_a.tiles[0]).sum(), atol=1e-6)
    feats, mask = pad_bags([a, b])
    out = m(feats, mask)
    assert torch.allclose(out.slide, torch.stack([m(a).slide[0], m(b).slide[0]]), atol=1e-6)
    assert out.attention[1, 3:].abs().max() == 0  # padding gets no weight


def test_ratio_aggregation_is_softplus_weighted_ratio_and_padding_invariant():
    torch.manual_seed(0)
    m = MILRegressor(6, hidden=8, attn_hidden=4, aggregation="ratio", dropout=0.0).eval()
    a, b = torch.randn(5, 6), torch.randn(3, 6)
    h = torch.relu(a @ m.post[0].weight.T + m.post[0].bias)  # (N, D) @ (D, H) -> (N, H)
    gate = torch.tanh(m.attn_v(h)) * torch.sigmoid(m.attn_u(h))  # (N, H) -> (N, A)
    w = torch.log1p(torch.exp(m.attn_w(gate).squeeze(-1)))  # softplus, (N, A) @ (A, 1) -> (N,)
    s = torch.sigmoid(h @ m.head[1].weight.T + m.head[1].bias).squeeze(-1)  # (N, H) @ (H, 1) -> (N,)
    out_a = m(a)
    assert torch.allclose(out_a.slide[0], (w * s).sum() / w.sum(), atol=1e-6)  # sum w_i s_i / sum w_i
    assert torch.allclose(out_a.attention[0], w / w.sum(), atol=1e-6)
    feats, mask = pad_bags([a, b])
    out = m(feats, mask)
    assert torch.allclose(out.slide, torch.stack([m(a).slide[0], m(b).slide[0]]), atol=1e-6)
    assert out.attention[1, 3:].abs().max() == 0  # padding gets no weight
    with pytest.raises(Exception, match="aggregation must be one of"):
        MILRegressor(6, aggregation="max")


def test_tile_dropout_draws_subsets_of_a_training_bag_and_is_part_of_the_run_identity():
    from adaptome.domains.pathology.config import MILTrainConfig
    from adaptome.domains.pathology.train import TRAIN_OPTIONS, _BagDataset

    bag = torch.arange(400, dtype=torch.float32).reshape(200, 2)  # 200 tiles, rows tell which tile it is
    whole = _BagDataset([bag], [40.0])
    b, t = whole[0]
    assert torch.equal(b, bag) and t == pytest.approx(0.4)
    torch.manual_seed(0)
    sub = _BagDataset([bag], [40.0], tile_dropout=0.5)
    draws = [sub[0][0] for _ in range(20)]
    sizes = np.array([len(d) for d in draws])
    assert 0.4 * 200 < sizes.mean() < 0.6 * 200 and len(set(sizes.tolist())) > 1  # about half, a new subset each time
    assert all(torch.equal(d, bag[(d[:, 0] / 2).long()]) for d in draws)  # real rows of the bag, in order
    one = _BagDataset([bag[:2]], [40.0], tile_dropout=0.999)
    assert all(len(one[0][0]) >= 1 for _ in range(20))  # never an empty bag
    assert "tile_dropout" in TRAIN_OPTIONS and MILTrainConfig().tile_dropout == 0.0


def test_mil_loss_is_mse_on_fraction():
    torch.manual_seed(0)
    m = MILRegressor(4, aggregation="mean", dropout=0.0).eval()
    bags = [torch.randn(3, 4), torch.randn(6, 4)]
    batch = collate_bags([(bags[0], 0.2), (bags[1], 0.7)])
    pred = torch.stack([m(b).slide[0] for b in bags])
    assert torch.allclose(mil_loss(m, batch), ((pred - torch.tensor([0.2, 0.7])) ** 2).mean(), atol=1e-6)


def _score_heldout(trained_dir, heldout):
    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.config import ScoreConfig

    cfg = ScoreConfig(slides=str(heldout["slides"]), model=trained_dir, features_dir=str(heldout["features_dir"]),
                      out_dir=str(heldout["root"] / ("scores_" + trained_dir.rsplit("/", 1)[-1])), heatmaps=False)
    summary, slides_csv = stages.score(cfg, progress=False)
    pred = {r["slide_id"]: float(r["stil_pct"]) for r in csv.DictReader(open(slides_csv))}
    truth = {r["slide_id"]: float(r["target"]) for r in csv.DictReader(open(heldout["labels"]))}
    ids = sorted(truth)
    return np.array([truth[i] for i in ids]), np.array([pred[i] for i in ids]), cfg


def test_recovers_planted_stil_on_heldout_slides(trained, heldout, capsys):
    y, p, _ = _score_heldout(trained["real"]["out_dir"], heldout)
    r2, auc = ev.r2_score(y, p), ev.roc_auc((y >= np.median(y)).astype(int), p)
    with capsys.disabled():
        print(f"\n[pathology] held-out synthetic sTIL: R2 {r2:.3f}, AUC(>= median {np.median(y):.1f}%) {auc:.3f}")
    assert r2 > 0.8
    assert auc > 0.9
    # training loss fell in every fold
    for f in trained["real"]["folds"]:
        assert f["last_loss"] < 0.5 * f["first_loss"]


def test_shuffled_labels_negative_control(trained, heldout, capsys):
    y, p, _ = _score_heldout(trained["shuffled"]["out_dir"], heldout)
    r2 = ev.r2_score(y, p)
    with capsys.disabled():
        print(f"\n[pathology] shuffled-label control: held-out R2 {r2:.3f}")
    assert r2 < 0.25


def test_tile_scores_track_planted_density(trained, heldout):
    from adaptome.domains.pathology.synth import read_truth

    _, _, cfg = _score_heldout(trained["real"]["out_dir"], heldout)
    scores, dens = [], []
    for sid in ("test_000", "test_001", "test_002", "test_003"):
        truth = read_truth(heldout["slides"] / "truth" / f"{sid}.csv")
        for r in csv.DictReader(open(f"{cfg.out_dir}/tiles/{sid}.csv")):
            scores.append(float(r["score_pct"]))
            dens.append(truth[(int(r["x"]), int(r["y"]))][2])
    assert ev.pearson(scores, dens) > 0.8
    assert ev.spearman(scores, dens) > 0.8


def test_cv_outputs_and_evaluate(trained, cohort, tmp_path):
    from adaptome.domains.pathology.evaluate import evaluate_predictions, read_predictions

    out_dir = trained["real"]["out_dir"]
    rows = read_predictions(f"{out_dir}/predictions.csv")
    assert len(rows) == 32 and sorted({r["fold"] for r in rows}) == [0, 1, 2, 3]
    res = evaluate_predictions(f"{out_dir}/predictions.csv", tmp_path, cutoff=30.0)
    y = np.array([r["target"] for r in rows])
    p = np.array([r["pred"] for r in rows])
    from sklearn.metrics import mean_squared_error, r2_score, roc_auc_score

    assert res["pooled"]["r2"] == pytest.approx(r2_score(y, p))
    assert res["pooled"]["mse"] == pytest.approx(mean_squared_error(y, p))
    assert res["pooled"]["auc"] == pytest.approx(roc_auc_score(y >= 30, p))
    per = [v["r2"] for v in res["per_fold"].values()]
    assert res["mean_sd"]["r2"]["mean"] == pytest.approx(np.mean(per))
    assert res["mean_sd"]["r2"]["sd"] == pytest.approx(np.std(per, ddof=1))
    assert res["pooled"]["r2"] > 0.8
    assert "0.45" in (tmp_path / "report.md").read_text()
    # folds are grouped by site: no site in two test folds
    sites = {r["slide_id"]: r["site"] for r in csv.DictReader(open(cohort["labels"]))}
    by_site = {}
    for r in rows:
        by_site.setdefault(sites[r["slide_id"]], set()).add(r["fold"])
    assert len(by_site) == 4 and all(len(v) == 1 for v in by_site.values())


def test_fold_models_saved_as_safetensors_and_reload(trained, cohort):
    import json
    from pathlib import Path

    from adaptome.domains.pathology.extract import read_features
    from adaptome.domains.pathology.train import load_model

    d = Path(trained["real"]["out_dir"])
    meta = json.loads((d / "fold_0" / "model.json").read_text())
    assert meta["aggregation"] == "ratio" and meta["in_dim"] == 44
    m = load_model(d / "fold_0")
    feats, _, _ = read_features(cohort["features_dir"] / "train_000.h5")
    with torch.no_grad():
        p = float(m(torch.from_numpy(feats)).slide[0]) * 100
    assert 0 <= p <= 100
    best = json.loads((d / "cv_summary.json").read_text())["best_fold"]
    assert best in range(4)


def test_score_on_the_fly_equals_stored_features(trained, heldout, tmp_path):
    import json
    from pathlib import Path

    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.config import ScoreConfig

    meta = json.loads((Path(trained["real"]["out_dir"]) / "fold_0" / "model.json").read_text())
    assert meta["features"] == {"encoder": "baseline", "target_mpp": 0.5, "tile_size": 64, "overlap": 0,
                                "min_tissue": 0.5, "thumb_size": 256, "stain_norm": "none", "artefacts": False,
                                "blur": 5, "close": 2, "min_area_frac": 0.001,  # the tissue-mask settings
                                "encoder_options": {"lymph": True, "lymph_radius": 3.0, "stroma_cut": "slide",
                                                    "centre": "scale"},
                                "encoder_weights": "none", "roi": False, "roi_classes": "[]"}
    slide = str(heldout["slides"] / "test_004.tiff")
    rows = {}
    for name, fdir in (("stored", str(heldout["features_dir"])), ("fly", "")):
        cfg = ScoreConfig(slides=slide, model=trained["real"]["out_dir"], features_dir=fdir,
                          out_dir=str(tmp_path / name), heatmaps=False)
        _, csv_path = stages.score(cfg, progress=False)
        rows[name] = next(csv.DictReader(open(csv_path)))
    assert rows["fly"]["n_tiles"] == rows["stored"]["n_tiles"]
    assert float(rows["fly"]["stil_pct"]) == pytest.approx(float(rows["stored"]["stil_pct"]), abs=1e-3)


def test_score_on_the_fly_uses_the_encoder_options_the_model_was_trained_on(heldout, tmp_path):
    """Features made with a non-default encoder option (a fixed stroma cut) train a model; scoring on the
    fly re-creates them with that option (not the default per-slide cut), and a model that records no
    options is refused rather than scored with today's defaults."""
    import json
    import shutil

    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.config import ExtractConfig, MILTrainConfig, ScoreConfig
    from adaptome.domains.pathology.errors import PathologyError

    tiles = tmp_path / "tiles"
    shutil.copytree(heldout["tiles_dir"], tiles, ignore=shutil.ignore_patterns("features_*"))
    stages.extract(ExtractConfig(slides=str(heldout["slides"]), tiles_dir=str(tiles), num_workers=0,
                                 encoder_options={"stroma_cut": 0.3}), progress=False)
    fdir = tiles / "features_baseline"
    res = stages.train(MILTrainConfig(features_dir=str(fdir), labels=str(heldout["labels"]), out_dir=str(tmp_path),
                                      k=2, group_by="site", max_steps=30, batch_size=4),
                       progress=False)
    model = Path(res["out_dir"])
    mj = model / "fold_0" / "model.json"
    assert json.loads(mj.read_text())["features"]["encoder_options"]["stroma_cut"] == 0.3
    slide = str(heldout["slides"] / "test_004.tiff")

    def stil(features_dir: str, name: str) -> float:
        cfg = ScoreConfig(slides=slide, model=str(model), features_dir=features_dir, out_dir=str(tmp_path / name),
                          heatmaps=False)
        return float(next(csv.DictReader(open(stages.score(cfg, progress=False)[1])))["stil_pct"])

    stored, fly = stil(str(fdir), "stored"), stil("", "fly")
    assert fly == pytest.approx(stored, abs=1e-3)
    # the same models on features made with the default per-slide cut score differently, so ignoring the
    # recorded option would have changed the score; given as stored features, those are refused
    from adaptome.domains.pathology.extract import read_features
    from adaptome.domains.pathology.score import load_models, score_bag

    default_feats = read_features(heldout["features_dir"] / "test_004.h5")[0]
    assert abs(score_bag(load_models(model), default_feats)["slide"] - stored) > 1e-3
    from adaptome.domains.pathology.slide import SlideError  # the stage names the slide, then the cause

    with pytest.raises(SlideError, match=r"test_004.h5: features made with encoder_options .*'slide'.* 0\.3"):
        stil(str(heldout["features_dir"]), "default_cut")
    metas = {f: f.read_text() for f in model.glob("fold_*/model.json")}
    for f, text in metas.items():  # features made with other encoder weights than scoring would use
        meta = json.loads(text)
        meta["features"]["encoder_weights"] = "sha256:" + "0" * 64
        f.write_text(json.dumps(meta))
    with pytest.raises(PathologyError, match="trained on features of encoder weights sha256:0+, but"):
        stil("", "other_weights")
    for f, text in metas.items():  # what a model trained before options were recorded holds
        meta = json.loads(text)
        del meta["features"]["encoder_options"]
        f.write_text(json.dumps(meta))
    with pytest.raises(PathologyError, match="records no encoder options"):
        stil("", "old_model")


def test_weights_id_follows_the_file_content_not_its_name(tmp_path):
    from adaptome.domains.pathology.encoders import weights_id

    a, b, c = tmp_path / "a.safetensors", tmp_path / "copy.safetensors", tmp_path / "c.safetensors"
    a.write_bytes(b"weights-1")
    b.write_bytes(b"weights-1")
    c.write_bytes(b"weights-2")
    assert weights_id(str(a)) == weights_id(str(b)) != weights_id(str(c))
    assert weights_id(str(a)).startswith("sha256:") and len(weights_id(str(a))) == 7 + 64
    assert weights_id(None, seed=3) == "random:3" and weights_id("hf-hub:org/uni") == "hf-hub:org/uni"
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        weights_id(str(tmp_path / "missing.pt"))


def test_training_is_reproducible(cohort, tmp_path):
    from adaptome.domains.pathology.train import train_cv

    preds = []
    for run in range(2):
        torch.randn(7 + run)  # disturb the global RNG differently before each run
        res = train_cv(cohort["features_dir"], cohort["labels"], tmp_path / f"r{run}", k=2, group_by="site",
                       max_steps=20, eval_every=10)
        preds.append([r["pred"] for r in csv.DictReader(open(res["predictions"]))])
    assert preds[0] == preds[1]
