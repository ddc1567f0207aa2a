"""NOLA numerics: forward == s B A with A, B rebuilt by hand from the seeded bases; bases depend
only on the seed (local generator, global RNG untouched); only the coefficients train and their
gradient is the projection of dL/dA, dL/dB on the bases; the checkpoint is seed + coefficients;
the bases are generated once and cached; every layer has its own seed."""

import os

import torch
from torch import nn

from adaptome.core.adapters import api, io
from adaptome.core.adapters.nola import NolaConfig, generate_basis


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 6))


def _cfg(**kw):
    return NolaConfig(**{"r": 3, "lora_alpha": 6, "num_basis_a": 5, "num_basis_b": 4, "target_modules": ["0"],
                         "init_coefficients": "random", **kw})


def test_forward_matches_explicit_formula():
    m = api.apply_adapter(_net(), _cfg())
    layer, x = m[0], torch.randn(4, 10)
    a0, ba, bb = generate_basis(int(layer.nola_seed["default"]), 3, 10, 6, 5, 4)
    alpha, beta = layer.nola_alpha["default"].detach(), layer.nola_beta["default"].detach()
    a = a0 + sum(alpha[i] * ba[i] for i in range(5))
    b = sum(beta[j] * bb[j] for j in range(4))
    torch.testing.assert_close(m(x), layer.base_layer(x) + 2.0 * x @ (b @ a).T)


def test_bases_depend_only_on_seed_and_leave_global_rng_alone():
    net = nn.Sequential(nn.Linear(10, 6))
    g0 = torch.random.get_rng_state()
    one, two = generate_basis(5, 2, 7, 3, 4, 4), generate_basis(5, 2, 7, 3, 4, 4)
    assert all(torch.equal(p, q) for p, q in zip(one, two))
    assert not torch.equal(generate_basis(6, 2, 7, 3, 4, 4)[1], one[1])
    m = api.apply_adapter(net, _cfg())
    m(torch.ones(2, 10)).sum().backward()
    assert torch.equal(torch.random.get_rng_state(), g0)
    assert one[1].abs().max() <= 1 / 2 + 1e-6  # U(-1, 1) / sqrt(k), k = 4
    if torch.cuda.is_available():  # device independence: generated on CPU, moved
        lay = m[0].cuda()
        a_gpu = lay.factors("default")[0].cpu()
        torch.testing.assert_close(a_gpu, m[0].cpu().factors("default")[0])


def test_only_coefficients_train_and_gradient_is_basis_projection():
    m = api.apply_adapter(_net(), _cfg())
    trainable = sorted(n for n, p in m.named_parameters() if p.requires_grad)
    assert trainable == ["0.nola_alpha.default", "0.nola_beta.default"]
    layer, x = m[0], torch.randn(8, 10)
    # dL/dalpha_i = <dL/dA, A_i>, dL/dbeta_j = <dL/dB, B_j> (the official custom backward)
    a, b = (t.detach().requires_grad_() for t in layer.factors("default"))
    ((x @ a.T) @ b.T * 2.0).pow(2).sum().backward()
    (layer.adapter_forward("default", x)).pow(2).sum().backward()
    _, ba, bb = generate_basis(int(layer.nola_seed["default"]), 3, 10, 6, 5, 4)
    # float32 sums in a different order: relative tolerance
    torch.testing.assert_close(layer.nola_alpha["default"].grad, torch.einsum("ri,kri->k", a.grad, ba), rtol=1e-5,
                               atol=1e-4)
    torch.testing.assert_close(layer.nola_beta["default"].grad, torch.einsum("or,kor->k", b.grad, bb), rtol=1e-5,
                               atol=1e-4)


def test_checkpoint_is_seed_plus_coefficients(tmp_path):
    cfg = _cfg(num_basis_a=256, num_basis_b=256)
    m = api.apply_adapter(_net(), cfg)
    path = io.save_adapter(m, tmp_path / "a")
    coef_bytes = 4 * (256 + 256)
    size = os.path.getsize(path / "adapter_model.safetensors")
    assert coef_bytes + 8 <= size <= coef_bytes + 8 + 300  # + the safetensors header (~200 bytes)
    x = torch.randn(3, 10)
    torch.testing.assert_close(io.load_adapter(_net(), path)(x), m(x), atol=0, rtol=0)


def test_bases_are_generated_once_and_cached():
    m = api.apply_adapter(_net(), _cfg())
    x = torch.randn(4, 10)
    for _ in range(5):
        m(x).sum().backward()
    assert m[0].generations == 1
    m2 = api.apply_adapter(_net(), _cfg(cache_basis=False))
    for _ in range(5):
        m2(x)
    assert m2[0].generations == 5
    torch.testing.assert_close(m2(x), m(x))  # same seed, same config: same model


def test_nola_learns_a_planted_update():
    torch.manual_seed(0)
    m = api.apply_adapter(nn.Sequential(nn.Linear(16, 16)),
                          NolaConfig(r=4, lora_alpha=4, num_basis_a=64, num_basis_b=64, target_modules=["0"]))
    x = torch.randn(256, 16)
    a, b = m[0].factors("default")
    with torch.no_grad():  # a target reachable by the coefficients: perturb beta, alpha by random amounts
        m[0].nola_beta["default"].normal_()
        m[0].nola_alpha["default"].normal_()
        y = m(x)
        m[0].nola_beta["default"].zero_()
        m[0].nola_alpha["default"].zero_()
        before = (m(x) - y).pow(2).mean().item()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(300):
        opt.zero_grad()
        (m(x) - y).pow(2).mean().backward()
        opt.step()
    with torch.no_grad():
        assert (m(x) - y).pow(2).mean().item() < 0.05 * before


def test_each_layer_has_its_own_seed_and_bases(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 6), nn.Linear(6, 6))
    m = api.apply_adapter(net, _cfg(target_modules=["0", "2", "3"]))
    seeds = [int(m[i].nola_seed["default"]) for i in (0, 2, 3)]
    assert len(set(seeds)) == 3  # layers 2 and 3 have one shape but not one basis
    assert not torch.equal(m[2].bases("default", torch.device("cpu"), torch.float32)[1],
                           m[3].bases("default", torch.device("cpu"), torch.float32)[1])
    # the same config on the same architecture gives the same seeds (nothing random)
    torch.manual_seed(1)
    net2 = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 6), nn.Linear(6, 6))
    m2 = api.apply_adapter(net2, _cfg(target_modules=["0", "2", "3"]))
    assert [int(m2[i].nola_seed["default"]) for i in (0, 2, 3)] == seeds
