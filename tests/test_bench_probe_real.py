"""bench/probe_real.py: the feature transforms a probe can train on (centred, standardised, on every
level or some) use the training pictures' statistics over every category, and a transformed run
keeps its decoder apart."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import probe_memory
import probe_real


def _raw() -> dict[str, dict[str, list[torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)

    def level(n: int, c: int, size: int, shift: float) -> torch.Tensor:
        scale = torch.linspace(0.1, 5.0, c).view(1, c, 1, 1)  # channels of very different spread
        return (torch.randn(n, c, size, size, generator=g) * scale + shift).half()

    return {
        cat: {
            "train": [level(6, 4, 8, shift), level(6, 3, 4, -shift)],
            "test": [level(3, 4, 8, shift + 1), level(3, 3, 4, -shift)],
        }
        for cat, shift in (("a", 1.0), ("b", 3.0))
    }


def test_standardised_channels_have_zero_mean_and_unit_spread_over_every_categorys_training() -> None:
    raw = _raw()
    out = probe_real.centred(raw, scaled=True)
    for level in range(2):
        train = torch.cat([out[c]["train"][level] for c in out]).float()
        assert torch.allclose(train.mean((0, 2, 3)), torch.zeros(train.shape[1]), atol=2e-3)
        assert torch.allclose(train.std((0, 2, 3)), torch.ones(train.shape[1]), atol=2e-3)
    # test pictures get the training statistics (every category's), not their own
    before = torch.cat([raw[c]["train"][0] for c in raw]).float()
    mean, spread = before.mean((0, 2, 3), keepdim=True), before.std((0, 2, 3), keepdim=True)
    want = (raw["a"]["test"][0].float() - mean) / spread
    assert torch.allclose(out["a"]["test"][0].float(), want, atol=5e-3)
    own = out["a"]["test"][0].float()
    assert not torch.allclose(own.std((0, 2, 3)), torch.ones(4), atol=0.05)  # its own spread would give 1


def test_centred_channels_keep_their_spread() -> None:
    raw = _raw()
    out = probe_real.centred(raw)
    train = torch.cat([out[c]["train"][0] for c in out]).float()
    before = torch.cat([raw[c]["train"][0] for c in raw]).float()
    assert torch.allclose(train.mean((0, 2, 3)), torch.zeros(4), atol=2e-3)
    assert torch.allclose(train.std((0, 2, 3)), before.std((0, 2, 3)), rtol=1e-3)


def test_standardising_one_level_leaves_the_other_as_it_was() -> None:
    raw = _raw()
    out = probe_real.centred(raw, scaled=True, levels=[1])
    for cat in raw:
        assert torch.equal(out[cat]["train"][0], raw[cat]["train"][0])
        assert torch.equal(out[cat]["test"][0], raw[cat]["test"][0])
    coarse = torch.cat([out[c]["train"][1] for c in out]).float()
    assert torch.allclose(coarse.std((0, 2, 3)), torch.ones(3), atol=2e-3)


def test_a_transformed_run_never_overwrites_the_plain_decoder() -> None:
    plain = probe_real.decoder_file('default train {"batch_size":8}', 5000, 0)
    assert plain == probe_memory.DEFAULT_DECODER.name == "default_train___batch_size__8__5000.pt"
    others = {
        probe_real.decoder_file('default train {"batch_size":8}', 5000, 0, standardise=True),
        probe_real.decoder_file('default train {"batch_size":8}', 5000, 0, center=True),
        probe_real.decoder_file('default train {"batch_size":8}', 5000, 0, photometric=True),
        probe_real.decoder_file('default train {"batch_size":8}', 5000, 0, standardise=[1]),
        probe_real.decoder_file('default train {"batch_size":8}', 5000, 1),
    }
    assert plain not in others and len(others) == 5
