"""Encoders: stain deconvolution numerics, timm from config, local weights, adapters; extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptome.core.registry import RegistryError
from adaptome.domains.pathology.encoders import StainTextureFeatures, add_adapter, build_encoder
from adaptome.domains.pathology.extract import encode_tiles, finish_slide, read_features, tile_loader, write_features
from adaptome.domains.pathology.synth import E_VEC, H_VEC
from adaptome.domains.pathology.tiling import TileReader, geometry_from_attrs, read_coords

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}


def test_deconvolution_inverts_beer_lambert():
    rng = np.random.default_rng(0)
    ch, ce = rng.uniform(0, 1.2, (1, 16, 16)), rng.uniform(0, 1.0, (1, 16, 16))
    od = ch[..., None] * H_VEC + ce[..., None] * E_VEC  # (1, 16, 16, 3)
    rgb = 250.0 * np.exp(-od) / 255.0  # the synthetic slides' image model, in [0, 1]
    x = torch.tensor(rgb, dtype=torch.float32).permute(0, 3, 1, 2)  # (1, 16, 16, 3) -> (1, 3, 16, 16)
    conc = StainTextureFeatures().deconvolve(x)
    assert torch.allclose(conc[0, 0], torch.tensor(ch[0], dtype=torch.float32), atol=2e-3)
    assert torch.allclose(conc[0, 1], torch.tensor(ce[0], dtype=torch.float32), atol=2e-3)
    assert conc[0, 2].abs().max() < 2e-3  # residual channel empty for pure H&E


def test_baseline_shapes_and_no_weights():
    enc = build_encoder("baseline")
    tiles = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    assert finish_slide(enc, enc(tiles).numpy()).shape == (3, enc.dim)  # after the per-slide step
    with pytest.raises(ValueError, match="no weights"):
        build_encoder("baseline", weights="x.safetensors")


def test_unknown_encoder_lists_known():
    with pytest.raises(RegistryError, match="baseline"):
        build_encoder("nonsense")


def test_timm_vit_from_config_and_local_weights_roundtrip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    enc = build_encoder("timm:vit_tiny_patch16_224", options=TINY_VIT)
    tiles = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)  # resized to 32 inside
    out = enc(tiles)
    assert out.shape == (2, 48) and enc.dim == 48
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in enc.net.state_dict().items()}, str(path))
    torch.manual_seed(1)
    enc2 = build_encoder("timm:vit_tiny_patch16_224", weights=str(path), options=TINY_VIT)
    assert torch.allclose(enc2(tiles), out, atol=1e-5)
    save_file({"foo": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="bad.safetensors"):
        build_encoder("timm:vit_tiny_patch16_224", weights=str(tmp_path / "bad.safetensors"), options=TINY_VIT)


def test_lora_on_timm_vit_attention():
    torch.manual_seed(0)
    enc = build_encoder("timm:vit_tiny_patch16_224", options=TINY_VIT)
    tiles = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    ref = enc(tiles).detach()
    enc = add_adapter(enc, "lora_native", {"r": 4, "target_modules": "attention"})
    assert torch.allclose(enc(tiles), ref, atol=1e-6)  # B = 0 at init
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    wrapped = {n.rsplit(".lora_A", 1)[0] for n in trainable if ".lora_A" in n}
    assert len(wrapped) == 2 * TINY_VIT["depth"] and all(n.endswith(("attn.qkv", "attn.proj")) for n in wrapped)
    # r * (in + out) per wrapped linear: qkv 48 -> 144, proj 48 -> 48
    n_params = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert n_params == TINY_VIT["depth"] * 4 * ((48 + 144) + (48 + 48))


def test_feature_file_roundtrip(tmp_path):
    feats = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    coords = np.arange(14).reshape(7, 2) * 64
    write_features(tmp_path / "s.h5", feats, coords, {"mpp": 0.5, "tile_size": 64, "encoder": "baseline"})
    f2, c2, attrs = read_features(tmp_path / "s.h5")
    assert np.array_equal(f2, feats) and np.array_equal(c2, coords)
    assert attrs["mpp"] == 0.5 and attrs["encoder"] == "baseline" and attrs["tile_size"] == 64
    (tmp_path / "bad.h5").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.h5"):
        read_features(tmp_path / "bad.h5")


def test_extracted_features_match_direct_encoding_with_workers(cohort):
    from adaptome.domains.pathology.slide import open_slide

    sid = "train_003"
    feats, coords, attrs = read_features(cohort["features_dir"] / f"{sid}.h5")
    tc, _ = read_coords(cohort["tiles_dir"] / f"{sid}.h5")
    assert np.array_equal(coords, tc) and feats.shape == (len(tc), 44)
    assert attrs["encoder"] == "baseline" and attrs["target_mpp"] == 0.5 and attrs["tile_size"] == 64
    path = cohort["slides"] / f"{sid}.tiff"
    s = open_slide(path)
    geom = geometry_from_attrs(attrs | {"overlap": 0}, s.level_downsamples)
    reader = TileReader(path, geom)
    enc = build_encoder("baseline")
    with torch.no_grad():  # every tile of the slide: the per-slide stroma cut needs them all
        direct = finish_slide(enc, enc(torch.from_numpy(np.stack([reader.read(*c) for c in coords]))).numpy())
    assert np.allclose(direct, feats, atol=1e-5)
    # two reader worker processes give the same features in the same order
    par = encode_tiles(enc, tile_loader(TileReader(path, geom), coords, batch_size=8, num_workers=2))
    assert np.allclose(par, feats, atol=1e-5)
