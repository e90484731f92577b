"""DeiT's distillation token added to any timm ViT (Touvron et al., "Training data-efficient image
transformers & distillation through attention", ICML 2021, Section 4).

:func:`add_distillation_token` turns a timm ``VisionTransformer`` with a class token into timm's
``VisionTransformerDistilled`` in place: a learned token after the class token, a position
embedding for it (unless the model adds position embeddings to patches only), and a second
classifier ``head_dist`` reading it. Parameter names and the forward are then those of timm's
``deit_*_distilled_*`` models, so their checkpoints and the DEIT distiller work unchanged.
"""

import torch
from timm.layers import trunc_normal_
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mdistiller.errors import IncompatibleModelError

__all__ = ["add_distillation_token"]


def add_distillation_token(vit: nn.Module) -> VisionTransformerDistilled:
    """``vit`` with a distillation token and head, the new weights drawn as timm draws them
    (truncated normal, std 0.02; zero head bias)."""
    if isinstance(vit, VisionTransformerDistilled):
        return vit
    if not isinstance(vit, VisionTransformer):
        raise IncompatibleModelError(f"a distillation token needs a timm VisionTransformer, not {type(vit).__name__}")
    if vit.cls_token is None or vit.global_pool != "token" or vit.num_prefix_tokens != 1:
        raise IncompatibleModelError(
            "a distillation token needs a ViT read out from one class token (global_pool='token', no register "
            "tokens): build it with class_token=True, global_pool='token', reg_tokens=0"
        )
    param = vit.cls_token
    dist_token = torch.empty_like(param.data)
    trunc_normal_(dist_token, std=0.02)
    if not vit.no_embed_class:  # the class token has a position embedding: so does the new token
        dist_pos = torch.empty_like(vit.pos_embed.data[:, :1])
        trunc_normal_(dist_pos, std=0.02)
        pos = vit.pos_embed.data
        vit.pos_embed = nn.Parameter(torch.cat([pos[:, :1], dist_pos, pos[:, 1:]], dim=1))
    vit.__class__ = VisionTransformerDistilled
    vit.num_prefix_tokens = 2
    vit.dist_token = nn.Parameter(dist_token)
    if vit.num_classes > 0:
        vit.head_dist = nn.Linear(vit.embed_dim, vit.num_classes, device=param.device, dtype=param.dtype)
        trunc_normal_(vit.head_dist.weight, std=0.02)
        nn.init.zeros_(vit.head_dist.bias)
    else:
        vit.head_dist = nn.Identity()
    vit.distilled_training = False
    vit.weight_init_mode = ""
    return vit
