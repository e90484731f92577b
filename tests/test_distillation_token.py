"""A distillation token added to a timm ViT: the result is timm's own distilled DeiT (same parameter
names and shapes, same outputs once the weights are shared), and the adapter exposes its two heads."""

import pytest
import timm
import torch

from mdistiller.errors import IncompatibleModelError
from mdistiller.models.adapter import TimmFeatureModel
from mdistiller.models.distillation_token import add_distillation_token

TINY = dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, num_classes=10)


def test_converted_vit_equals_timms_distilled_deit():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **TINY)
    pos = vit.pos_embed.data.clone()
    converted = add_distillation_token(vit)
    reference = timm.create_model("deit_tiny_distilled_patch16_224", **TINY)
    reference.load_state_dict(converted.state_dict(), strict=True)  # same names and shapes
    assert converted.pos_embed.shape == (1, 2 + 64, 48)
    assert torch.equal(converted.pos_embed.data[:, :1], pos[:, :1])  # class token's embedding kept
    assert torch.equal(converted.pos_embed.data[:, 2:], pos[:, 1:])  # patches' embeddings kept
    x = torch.randn(2, 3, 32, 32)
    converted.eval(), reference.eval()
    with torch.no_grad():
        assert torch.allclose(converted(x), reference(x), atol=1e-6)
        converted.set_distilled_training(True), reference.set_distilled_training(True)
        converted.train(), reference.train()
        for a, b in zip(converted(x), reference(x)):
            assert torch.allclose(a, b, atol=1e-6)


def test_position_embeddings_of_patches_only_are_kept_as_they_are():
    # no_embed_class (DeiT-3 style): the prefix tokens have no position embedding, so none is added
    # (timm's own distilled class allocates two and cannot run in this layout)
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", no_embed_class=True, **TINY)
    pos = vit.pos_embed.data.clone()
    converted = add_distillation_token(vit).train()
    assert torch.equal(converted.pos_embed.data, pos)
    converted.set_distilled_training(True)
    cls, dist = converted(torch.randn(2, 3, 32, 32))
    assert cls.shape == dist.shape == (2, 10)


def test_adapter_exposes_both_heads_of_a_converted_vit():
    torch.manual_seed(0)
    model = TimmFeatureModel(add_distillation_token(timm.create_model("vit_tiny_patch16_224", **TINY)), "vit", 32)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        logits, feats = model(x)
        raw = model.model
        tokens = raw.forward_features(x)
        cls, dist = raw.head(tokens[:, 0]), raw.head_dist(tokens[:, 1])
    assert torch.allclose(feats["head_logits"][0], cls, atol=1e-6)
    assert torch.allclose(feats["head_logits"][1], dist, atol=1e-6)
    assert torch.allclose(logits, (cls + dist) / 2, atol=1e-6)
    assert feats["prefix"][0].shape == (2, 2, 48)  # class and distillation tokens, split off the maps
    assert feats["feats"][0].shape == (2, 48, 8, 8)


def test_a_vit_without_a_class_token_is_refused():
    vit = timm.create_model("vit_tiny_patch16_224", class_token=False, global_pool="avg", **TINY)
    with pytest.raises(IncompatibleModelError, match="class token"):
        add_distillation_token(vit)
