"""The frozen encoder is a real ImageNet model, loaded by order with every shape checked."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from proad.backbone import BackboneError, Encoder, builtin_weights_path, load_classifier, map_state_by_order
from proad.config import ModelConfig

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize(("backbone", "side"), [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite1", 240),
                                             ("tf_efficientnet_lite2", 260)])
def test_classifies_chelsea_as_a_cat(backbone: str, side: int) -> None:
    """Mapped by order, every built-in backbone is the real ImageNet model (a wrong mapping would
    still load if shapes agreed, and classify nothing)."""
    import skimage.data

    model = load_classifier(ModelConfig(backbone=backbone))
    rgb = cv2.resize(skimage.data.chelsea(), (side, side), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]  # tf_ models: [-1, 1]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in CAT_CLASSES
    assert sum(float(probs[c]) for c in CAT_CLASSES) > 0.8


@pytest.mark.parametrize(("backbone", "tensors"), [("tf_efficientnet_lite0", 247), ("tf_efficientnet_lite1", 322),
                                                ("tf_efficientnet_lite2", 322)])
def test_every_builtin_backbone_maps_by_order_with_every_shape_equal(backbone: str, tensors: int) -> None:
    import timm

    source = torch.load(builtin_weights_path(backbone), map_location="cpu", weights_only=True)
    model = timm.create_model(backbone, pretrained=False)
    mapped = map_state_by_order(source, model)
    assert len(mapped) == tensors and list(mapped) == [k for k in model.state_dict() if "num_batches" not in k]
    weights = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = model.state_dict()
    for src, (key, dst) in zip(weights, mapped.items(), strict=True):
        assert src is dst and dst.shape == target[key].shape  # the file's n-th tensor is the model's n-th


def test_mapping_by_order_checks_shapes() -> None:
    import timm

    source = torch.load(builtin_weights_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = map_state_by_order(source, model)
    assert len(mapped) == 247 and next(iter(mapped)) == "conv_stem.weight"
    broken = dict(source)
    first = next(iter(broken))
    broken[first] = torch.zeros(3, 3)
    with pytest.raises(BackboneError, match=r"tensor #0 .* has shape \(3, 3\)"):
        map_state_by_order(broken, model)
    with pytest.raises(BackboneError, match="not the same architecture"):
        map_state_by_order(dict(list(source.items())[:-2]), model)
    other = timm.create_model("mobilenetv3_small_050", pretrained=False)
    with pytest.raises(BackboneError):
        map_state_by_order(source, other)


@pytest.mark.parametrize(("backbone", "channels"), [("tf_efficientnet_lite1", [40, 112]),
                                                 ("tf_efficientnet_lite2", [48, 120])])
def test_bigger_builtin_encoders_give_the_same_strides(backbone: str, channels: list[int]) -> None:
    enc = Encoder(ModelConfig(backbone=backbone))
    assert enc.strides == [8, 16] and enc.channels == channels and len(enc.body.blocks) == 5
    feats = enc(torch.randn(1, 3, 256, 320))
    assert [tuple(f.shape) for f in feats] == [(1, channels[0], 32, 40), (1, channels[1], 16, 20)]


def test_encoder_is_truncated_frozen_and_equal_to_the_full_one() -> None:
    enc = Encoder(ModelConfig(feature_levels=(2, 3)))
    assert len(enc.body.blocks) == 5  # blocks 5 and 6 (stride 32) are never run
    assert enc.strides == [8, 16] and enc.channels == [40, 112]
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training  # BatchNorm statistics stay frozen
    full = Encoder(ModelConfig(feature_levels=(2, 3, 4)))
    assert len(full.body.blocks) == 7
    x = torch.randn(1, 3, 128, 128)
    a, b = enc(x), full(x)
    assert len(b) == 3
    for fa, fb in zip(a, b[:2], strict=True):
        torch.testing.assert_close(fa, fb)


def test_other_backbone_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backbone_checkpoint"):
        ModelConfig(backbone="resnet18")
    missing = ModelConfig(backbone="resnet18", backbone_checkpoint=str(tmp_path / "none.pth"))
    with pytest.raises(BackboneError, match="not found"):
        load_classifier(missing)


def test_user_checkpoint_for_another_timm_backbone(tmp_path: Path) -> None:
    import timm

    ref = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    cfg = ModelConfig(backbone="resnet18", backbone_checkpoint=str(path), feature_levels=(2, 3))
    enc = Encoder(cfg)
    assert enc.strides == [8, 16]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = ref.layer2(ref.layer1(ref.maxpool(ref.act1(ref.bn1(ref.conv1(x))))))
    torch.testing.assert_close(enc(x)[0], expected)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read"):
        Encoder(ModelConfig(backbone="resnet18", backbone_checkpoint=str(tmp_path / "junk.pth")))
