"""The Pro-AD module: shapes, the constraint's convex-hull invariant, map and score."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.optimize import nnls

import proad.model as model_module
from proad.config import ModelConfig
from proad.data.synth import render
from proad.model import InputNorm, ProAD, prototype_constraint


def hull_residual(points: torch.Tensor, vertices: torch.Tensor) -> float:
    """Largest distance from a point to the convex hull of ``vertices`` (NNLS with a sum-to-one row)."""
    v = vertices.detach().double().numpy()
    a = np.vstack([v.T, 1000.0 * np.ones((1, v.shape[0]))])
    worst = 0.0
    for p in points.detach().double().reshape(-1, v.shape[1]).numpy():
        w, _ = nnls(a, np.r_[p, 1000.0])
        worst = max(worst, float(np.linalg.norm(v.T @ w - p)))
    return worst


def test_constraint_output_lies_in_the_bank_hull() -> None:
    torch.manual_seed(0)
    bank = torch.randn(24, 16)
    p = torch.randn(2, 10, 16) * 3
    out = prototype_constraint(p, bank, tau=0.1)
    assert out.shape == p.shape
    assert hull_residual(out, bank) < 1e-6
    assert hull_residual(p, bank) > 0.1  # the input was not: the test can fail


def test_constraint_as_first_written_collapses_to_the_bank_mean() -> None:
    """Why DESIGN §2's first form over-constrained: small logits at tau = sqrt(D) give a uniform softmax."""
    torch.manual_seed(0)
    bank = torch.randn(256, 128) * 0.02  # the bank's initial scale
    p = bank[None] + 0.02 * torch.randn(1, 256, 128)  # P_0 = B, then adapted a little
    out = prototype_constraint(p, bank, tau=128**0.5, similarity="dot")
    spread = (out - bank.mean(0)).norm(dim=-1).max() / bank.norm(dim=-1).mean()
    assert spread < 0.05
    sharp = prototype_constraint(p, bank, tau=0.05, similarity="cosine")
    assert (sharp - bank.mean(0)).norm(dim=-1).max() / bank.norm(dim=-1).mean() > 0.5


@pytest.fixture(scope="module")
def model(small_cfg: ModelConfig) -> ProAD:
    torch.manual_seed(0)
    return ProAD(small_cfg).eval()


def _batch(n: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.stack([render("marble", index=i).image for i in range(n)]))


def test_forward_contract(model: ProAD) -> None:
    x = _batch()
    with torch.no_grad():
        amap, score = model(x)
    assert amap.shape == (2, 256, 256) and amap.dtype == torch.float32
    assert score.shape == (2,)
    k = round(256 * 256 * 0.01)
    expected = np.sort(amap.numpy().reshape(2, -1), axis=1)[:, -k:].mean(1)
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-5)


def test_input_norm_takes_bgr_uint8_nhwc() -> None:
    norm = InputNorm((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)
    img[..., 0] = 255  # blue in BGR
    out = norm(img)
    assert out.shape == (1, 3, 2, 2)
    assert torch.allclose(out[0, 2], torch.ones(2, 2)) and torch.allclose(out[0, 0], -torch.ones(2, 2))


def test_identical_features_give_a_zero_map(model: ProAD) -> None:
    with torch.no_grad():
        feats = model.features(_batch(1))
        amap = model.anomaly_map(feats, feats)
    assert amap.abs().max() < 1e-5


@pytest.mark.parametrize("update", [{}, {"map_sigma": 0.0}, {"map_sigma": 2.5}, {"map_pool": 3}, {"image_size": 320},
                                    {"image_size": (192, 320)}, {"image_size": (288, 160), "map_pool": 3}])
def test_map_is_designs_upsample_mean_and_smoothing(model: ProAD, update: dict[str, float]) -> None:
    """The map tail runs as matrix products (``upsample_blur_operator``): the same map as DESIGN §2's
    steps run one by one (``anomaly_map_steps``), to float rounding, for every smoothing (none
    included) and input size, square or rectangular (rows and columns have operators of their own)."""
    m = ProAD(ModelConfig.model_validate({**model.cfg.model_dump(), **update}), encoder=model.encoder).eval()
    height, width = m.cfg.input_hw
    torch.manual_seed(1)
    with torch.no_grad():
        feats = m.features(torch.from_numpy(np.stack([cv2.resize(render("board", index=i).image, (width, height))
                                                      for i in range(2)])))  # fmt: skip
        recs = [f + f.std() * torch.randn_like(f) for f in feats]
        got, want = m.anomaly_map(feats, recs), m.anomaly_map_steps(feats, recs)
    assert got.shape == want.shape == (2, height, width)
    assert float(want.std()) > 1e-2  # a map with structure, so the comparison can fail
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_pooled_map_compares_neighbourhoods(model: ProAD) -> None:
    """map_pool = 3: a difference confined to one position of one channel is spread over its 3x3
    neighbourhood and diluted, where the plain map keeps it sharp; identical features still give 0."""
    pooled = ProAD(model.cfg.model_copy(update={"map_pool": 3}), encoder=model.encoder)
    with torch.no_grad():
        feats = model.features(_batch(1))
        noisy = [f.clone() for f in feats]
        noisy[0][0, :, 10, 10] = -noisy[0][0, :, 10, 10]  # one stride-8 position turned around
        plain, spread = model.anomaly_map(feats, noisy), pooled.anomaly_map(feats, noisy)
        assert pooled.anomaly_map(feats, feats).abs().max() < 1e-5
    assert plain.shape == spread.shape and 0 < spread.max() < plain.max()
    with pytest.raises(ValueError, match="map_pool must be odd"):
        ModelConfig(map_pool=2)


def test_every_attention_goes_through_proto_attention(model: ProAD, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = model_module.proto_attention

    def counting(q, k, v, scale):
        calls.append((tuple(q.shape), tuple(k.shape)))
        return real(q, k, v, scale)

    monkeypatch.setattr(model_module, "proto_attention", counting)
    with torch.no_grad():
        model(_batch(1))
    # per layer: aggregation, constraint, reconstruction
    assert len(calls) == 3 * model.cfg.layers
    assert calls[0] == ((1, 2, 16, 16), (1, 2, 256, 16))  # 16 prototypes query 256 tokens
    assert calls[1] == ((1, 1, 16, 32), (1, 1, 16, 32))  # the constraint: one head over the bank
    assert calls[2] == ((1, 2, 256, 16), (1, 2, 16, 16))  # 256 tokens read 16 prototypes


def _reconstruction_inputs(m: ProAD) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hooks = [layer.rec_norm_p.register_forward_pre_hook(lambda mod, args: seen.append(args[0])) for layer in m.layers]
    with torch.no_grad():
        m(_batch(1))
    for h in hooks:
        h.remove()
    return seen


def test_tokens_read_only_the_bank_hull(small_cfg: ModelConfig) -> None:
    """The invariant the shipped constraint guarantees: reconstruction keys/values come from hull(B)."""
    torch.manual_seed(0)
    constrained = ProAD(small_cfg).eval()
    for kv in _reconstruction_inputs(constrained):
        assert hull_residual(kv, constrained.bank) < 1e-5
    free = ProAD(small_cfg.model_copy(update={"constraint": "none"})).eval()
    assert max(hull_residual(kv, free.bank) for kv in _reconstruction_inputs(free)) > 1e-3


def test_bottleneck_noise_only_while_training(model: ProAD) -> None:
    with torch.no_grad():
        feats = model.features(_batch(1))
        a = model.decode(feats).reconstructions[0]
        b = model.decode(feats).reconstructions[0]
        model.train()
        c = model.decode(feats).reconstructions[0]
        model.eval()
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert not model.encoder.training


def test_layers_are_grouped_over_levels() -> None:
    cfg = ModelConfig(dim=32, heads=2, layers=5, prototypes=8, feature_levels=(2, 3, 4))
    m = ProAD(cfg)
    assert m.groups == [[0, 1], [2, 3], [4]]
    with torch.no_grad():
        recs = m.decode(m.features(_batch(1))).reconstructions
    assert [tuple(r.shape[1:]) for r in recs] == [(40, 32, 32), (112, 16, 16), (320, 8, 8)]


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="divisible by heads"):
        ModelConfig(dim=30, heads=4)
    with pytest.raises(ValueError, match="extra"):
        ModelConfig(protoypes=6)  # misspelt: refused, not ignored
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig(image_size=100)
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig(image_size=(256, 300))
    with pytest.raises(ValueError, match="64-2048"):
        ModelConfig(image_size=(32, 256))
    with pytest.raises(ValueError, match="feature levels"):
        ModelConfig(layers=1, feature_levels=(2, 3))


def test_a_rectangular_input_keeps_its_token_grid_through_the_decoder(model: ProAD) -> None:
    """``image_size: [height, width]``: the token grid is height / 16 x width / 16 (no positions to
    fit, so the same decoder weights run on any grid), every level is rebuilt at its own rectangle,
    the map has the input's shape and the score's top fraction counts its pixels; a square given as
    a pair is the square."""
    cfg = model.cfg.model_copy(update={"image_size": (160, 288)})
    assert cfg.input_hw == (160, 288) and cfg.grid_hw == (10, 18)
    assert ModelConfig(image_size=[256, 256]).image_size == 256  # one spelling per size
    assert ModelConfig.model_validate_json(cfg.model_dump_json()) == cfg  # through checkpoints and metadata
    m = ProAD(cfg, encoder=model.encoder).eval()
    m.load_state_dict(model.state_dict(), strict=False)  # the square model's weights, unchanged
    image = cv2.resize(render("board", index=0).image, (288, 160))
    seen: list[tuple[int, ...]] = []  # the queries' 3x3 context sees the grid as rows x cols, not transposed
    m.layers[0].context.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        feats = m.features(torch.from_numpy(image[None]))
        out = m.decode(feats)
        amap, score = m(torch.from_numpy(image[None]))
    assert [tuple(f.shape[2:]) for f in feats] == [(20, 36), (10, 18)]
    assert [r.shape for r in out.reconstructions] == [f.shape for f in feats]
    assert out.tokens.shape == (1, 180, model.cfg.dim)
    assert seen[0] == (1, model.cfg.dim, 10, 18)
    # the tokens are the grid row by row: token r * 18 + c is the stride-16 feature at (r, c)
    stride16 = m._to_grid(feats[1], 16)
    assert torch.equal(stride16[0, 2 * 18 + 5], feats[1][0, :, 2, 5])
    assert amap.shape == (1, 160, 288)
    k = round(160 * 288 * cfg.score_top_fraction)
    assert float(score) == pytest.approx(float(amap.flatten().topk(k).values.mean()), rel=1e-6)
