"""The family sweep: one tiny random-weight model of every timm family that has
``forward_intermediates`` as student and as teacher of each heterogeneous method, one training step.

    python tests/family_sweep.py            # every case, one line each
    python tests/family_sweep.py --table    # the markdown table of docs/heterogeneous.md
    python tests/family_sweep.py --write-doc  # that table written into docs/heterogeneous.md

Each case pairs a family's model with the CIFAR zoo's ``resnet8`` (the other role) at the family's
image size and runs KD, FITNET, SFAKD, FREEKD (stage 1 for real: the engine's prompt trainer, one step of the
prompts inside the frozen teacher, their file written, then stage 2 reads it), OFA and SPECTRALKD with their
defaults. The outcome is ``works`` (finite losses; a gradient on exactly the parameters that learn,
none on the teacher; the teacher's state unchanged) or ``refuses: <the one-line UserError>`` at
build time. Anything else (a traceback, a second line, a failed check) is ``error: ...``, which
``tests/test_family_sweep.py`` rejects.

Sizes: 32 px, 4 blocks or one block per stage, widths 16-192, except EfficientFormer (v1), whose
attention biases are fixed at 7x7 at construction: 224 px. The Mixer family (MLP-Mixer, ResMLP,
gMLP) is built from timm's ``MlpMixer`` class, whose entry points fix the patch size.
"""

import contextlib
import copy
import io
import os
import sys
import tempfile
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

if __name__ == "__main__":  # run as a script: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mdistiller.distillers import distiller_dict  # noqa: E402
from mdistiller.distillers.frequency_prompts import build_prompts  # noqa: E402
from mdistiller.engine.cfg import build_cfg  # noqa: E402
from mdistiller.errors import UserError  # noqa: E402
from mdistiller.models import cifar_model_dict  # noqa: E402
from mdistiller.models.adapter import TimmFeatureModel  # noqa: E402
from mdistiller.models.external import build_external_model  # noqa: E402
from tests.prompt_files import learn_prompt_file  # noqa: E402

NUM_CLASSES, BATCH = 10, 2
METHODS = ("KD", "FITNET", "SFAKD", "FREEKD", "OFA", "SPECTRALKD")
ROLES = ("student", "teacher")
PARTNER = "resnet8"  # the other model of every pair: the CIFAR zoo's

TINY_VIT = dict(patch_size=4, embed_dim=48, depth=4, num_heads=3)
TINY_STAGES = dict(depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))


def _mixer(block: str) -> Callable[[int, int], nn.Module]:
    """A 4-block, 64-wide MLP-Mixer / ResMLP / gMLP of patch 4 (timm's MlpMixer with the family's blocks)."""

    def build(num_classes: int, size: int) -> nn.Module:
        from timm.models import mlp_mixer as mm
        from timm.layers import GatedMlp

        blocks = {"mixer": {}, "resmlp": dict(block_layer=mm.ResBlock, norm_layer=mm.Affine, mlp_ratio=4),
                  "gmlp": dict(block_layer=mm.SpatialGatingBlock, mlp_layer=GatedMlp, mlp_ratio=6)}[block]
        model = mm.MlpMixer(num_classes=num_classes, img_size=size, patch_size=4, num_blocks=4, embed_dim=64,
                            **blocks)
        return TimmFeatureModel(model, f"timm:MlpMixer({block})", size)

    return build


# family -> (timm name, kwargs) or a builder(num_classes, size), and the image size
FAMILIES: Dict[str, Tuple[object, int]] = {
    "ViT": (("timm:vit_tiny_patch16_224", TINY_VIT), 32),
    "DeiT (distilled)": (("timm:deit_tiny_distilled_patch16_224", TINY_VIT), 32),
    "CaiT": (("timm:cait_xxs24_224", dict(TINY_VIT, depth_token_only=1)), 32),
    "XCiT": (("timm:xcit_nano_12_p8_224", dict(embed_dim=48, depth=4, num_heads=4)), 32),
    "Swin": (("timm:swin_tiny_patch4_window7_224", dict(TINY_STAGES, window_size=2, embed_dim=24)), 32),
    "Swin-V2": (("timm:swinv2_tiny_window8_256", dict(TINY_STAGES, window_size=2, embed_dim=24)), 32),
    "ConvNeXt": (("timm:convnext_atto", dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1))), 32),
    "MLP-Mixer": (_mixer("mixer"), 32),
    "ResMLP": (_mixer("resmlp"), 32),
    "gMLP": (_mixer("gmlp"), 32),
    "PVT-v2": (("timm:pvt_v2_b0", dict(TINY_STAGES, embed_dims=(16, 32, 64, 128))), 32),
    "LeViT": (("timm:levit_128s", dict(embed_dim=(32, 48, 64), key_dim=8, num_heads=(1, 2, 2), depth=(1, 1, 1))), 32),
    "EfficientFormer": (("timm:efficientformer_l1", dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128),
                                                         num_vit=1)), 224),
    "EfficientFormer-V2": (("timm:efficientformerv2_s0", dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128))), 32),
    "EfficientNet": (("timm:test_efficientnet", {}), 32),
    "RegNet": (("timm:regnetx_002", {}), 32),
    "ResNet": (("timm:resnet10t", dict(stem_width=8, channels=(16, 32, 64, 128))), 32),
    "MobileNetV3": (("timm:mobilenetv3_small_050", {}), 32),
    "EVA-02": (("timm:eva02_tiny_patch14_224", TINY_VIT), 32),
    "BEiT": (("timm:beit_base_patch16_224", TINY_VIT), 32),
    "DaViT": (("timm:davit_tiny", dict(TINY_STAGES, embed_dims=(16, 32, 64, 128), window_size=2)), 32),
    "MaxViT": (("timm:test_maxvit", {}), 32),
}
DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "heterogeneous.md")
BEGIN, END = "<!-- family sweep: begin -->", "<!-- family sweep: end -->"  # the table's place in DOC
FAST = [("ViT", "student", "KD"), ("Swin", "student", "OFA"), ("ConvNeXt", "teacher", "SFAKD"),
        ("ViT", "teacher", "FREEKD")]


def build_family(family: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    """The family's tiny model, seeded, behind the adapter."""
    spec, size = FAMILIES[family]
    torch.manual_seed(0)
    if callable(spec):
        return spec(num_classes, size)
    name, kwargs = spec
    return build_external_model(name, num_classes, size, kwargs)


def build_partner(num_classes: int = NUM_CLASSES) -> nn.Module:
    torch.manual_seed(0)
    return cifar_model_dict[PARTNER][0](num_classes=num_classes)


def learn_prompts_one_step(cfg, teacher: nn.Module, batch: Dict[str, torch.Tensor]) -> None:
    """FREEKD's stage 1 for real: the engine's prompt trainer, one epoch of one step on the batch,
    the prompts plugged into (a copy of) the frozen teacher; its file is written where stage 2 reads
    it. Every prompt tensor must have moved (AdamW's first step moves each entry with a gradient)."""
    stage1 = cfg.clone()
    stage1.defrost()
    stage1.FREEKD.PROMPT_EPOCHS = 1
    torch.manual_seed(3)
    record = learn_prompt_file(stage1, teacher, batch["image"], batch["target"])
    torch.manual_seed(3)
    initial = build_prompts(record["channels"], cfg.FREEKD).state_dict()
    for key, learned in record["prompts"].items():
        assert not torch.equal(learned, initial[key]), f"stage 1: prompt {key} learned nothing"


def step_and_check(distiller: nn.Module, batch: Dict[str, torch.Tensor]) -> None:
    """One training step's contract: finite scalar losses, a finite gradient on exactly the learnable
    parameters that require one, none on the teacher, the teacher's state unchanged."""
    teacher = distiller.teacher or nn.Module()  # NONE trains the student alone
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller.train()
    _, losses = distiller(**batch)
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), f"loss {name} is {value}"
    sum(losses.values()).backward()
    learnable = {id(p) for p in distiller.get_learnable_parameters() if p.requires_grad}
    named = dict(distiller.named_parameters())
    with_grad = {name for name, p in named.items() if p.grad is not None}
    expected = {name for name, p in named.items() if id(p) in learnable}
    assert with_grad == expected, \
        f"no gradient: {sorted(expected - with_grad)[:3]}, unexpected: {sorted(with_grad - expected)[:3]}"
    assert all(torch.isfinite(named[name].grad).all() for name in with_grad), "a non-finite gradient"
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), f"teacher {key} changed"


def run_case(family: str, role: str, method: str, models: Dict[str, nn.Module], workdir: str) -> str:
    """``works``, ``refuses: <one line>`` or ``error: <what went wrong>`` for one case."""
    size = FAMILIES[family][1]
    model = copy.deepcopy(models[family])
    partner = build_partner()
    student, teacher = (model, partner) if role == "student" else (partner, model)
    cfg = build_cfg(None, [f"DISTILLER.TYPE={method}", f"DATASET.IMAGE_SIZE={size}", f"LOG.PREFIX={workdir}",
                           f"EXPERIMENT.TAG={family}_{role}", "LOG.PROGRESS_BAR=False"])
    generator = torch.Generator().manual_seed(1)
    batch = dict(image=torch.randn(BATCH, 3, size, size, generator=generator), target=torch.tensor([0, 1]),
                 epoch=1, index=torch.arange(BATCH))
    try:
        if method == "FREEKD":
            with contextlib.redirect_stdout(io.StringIO()):  # the trainer's last line, "Best accuracy"
                learn_prompts_one_step(cfg, teacher, batch)
        distiller = distiller_dict[method](student, teacher, cfg, num_classes=NUM_CLASSES, num_data=64)
    except UserError as err:
        text = str(err)
        if "\n" in text or not text:
            return f"error: a refusal of {len(text.splitlines())} lines"
        return f"refuses: {text}"
    except Exception as err:  # noqa: BLE001 - the sweep reports a traceback instead of stopping
        return f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    try:
        torch.manual_seed(0)
        step_and_check(distiller, batch)
    except Exception as err:  # noqa: BLE001
        return f"error: in the step, {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return "works"


def cases(families=None) -> List[Tuple[str, str, str]]:
    return [(f, r, m) for f in (families or FAMILIES) for r in ROLES for m in METHODS]


def run_sweep(selected=None, workdir: str = "") -> Dict[Tuple[str, str, str], str]:
    """The outcome of each (family, role, method) case (all by default)."""
    selected = selected or cases()
    with tempfile.TemporaryDirectory() as scratch:
        models = {family: build_family(family) for family in sorted({case[0] for case in selected})}
        return {case: run_case(*case, models, workdir or scratch) for case in selected}


def table(outcomes: Dict[Tuple[str, str, str], str]) -> str:
    """The markdown table of docs/heterogeneous.md: per family and method, the outcome as student /
    as teacher ("works", or "refuses (n)" with n the refusal's number in the list below the table)."""
    reasons: List[str] = []

    def cell(outcome: str) -> str:
        if outcome == "works":
            return "works"
        if outcome not in reasons:
            reasons.append(outcome)
        return f"refuses ({reasons.index(outcome) + 1})"

    lines = ["| family (tiny model, px) | " + " | ".join(f"{m} as student / teacher" for m in METHODS) + " |",
             "|---" * (len(METHODS) + 1) + "|"]
    for family, (spec, size) in FAMILIES.items():
        name = spec[0] if isinstance(spec, tuple) else "timm MlpMixer"
        row = [f"{family} (`{name}`, {size})"]
        for method in METHODS:
            row.append(" / ".join(cell(outcomes[(family, role, method)]) for role in ROLES))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"{i + 1}. {reason[len('refuses: '):] if reason.startswith('refuses: ') else reason}"
              for i, reason in enumerate(reasons)]
    return "\n".join(lines) + "\n"


def write_doc(text: str) -> None:
    """Replace the table between BEGIN and END in DOC by ``text``."""
    with open(DOC, encoding="utf-8") as f:
        doc = f.read()
    start, end = doc.index(BEGIN) + len(BEGIN) + 1, doc.index(END)
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(doc[:start] + text + doc[end:])


def main(argv: List[str]) -> None:
    outcomes = run_sweep()
    if "--table" in argv or "--write-doc" in argv:
        if "--write-doc" in argv:
            write_doc(table(outcomes))
        else:
            print(table(outcomes), end="")
        return
    for (family, role, method), outcome in outcomes.items():
        print(f"{family:20s} {role:8s} {method:11s} {outcome}")


if __name__ == "__main__":
    main(sys.argv[1:])
