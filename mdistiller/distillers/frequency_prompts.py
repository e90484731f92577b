"""Frequency prompts of a teacher, shared by the prompt-based distillers (FreeKD; adaptive frequency
prompting reuses the same keys, file, stage 1 and band loss through :class:`PromptDistiller`; dense
FreeKD the band loss through :class:`PromptBandLoss`).

A method declares its config section with :func:`prompt_defaults` (plus its own keys) and the stage
``"PROMPTS"`` in its ``stages``; the engine runs that stage (:mod:`mdistiller.engine.prompt_learning`,
also ``tools/train_prompt.py`` alone) before training, and it writes a prompt file that stage 2 loads
with :func:`load_prompts`. The file is a plain dict (weights-only loadable): the prompts'
state dict under ``"prompts"`` and what they were learned for (teacher name, a fingerprint of its
weights, feature indices, channels, tokens, DWT levels), which stage 2 checks.
"""

import os
import shlex
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from yacs.config import CfgNode as CN

from mdistiller.config_checks import OneOf, check_rules, positive
from mdistiller.dataset.base import image_size
from mdistiller.distillers._base import Distiller
from mdistiller.distillers.feature_shapes import feature_shapes
from mdistiller.errors import ConfigError
from mdistiller.frequency.prompt import DIVERSITY_KINDS, FrequencyBands, FrequencyPrompt
from mdistiller.losses.freekd import ChannelRelation, freekd_loss, relation_weights

__all__ = [
    "PromptBandLoss",
    "PromptDistiller",
    "PromptFileError",
    "build_prompts",
    "check_section",
    "distilled_indices",
    "load_prompts",
    "prompt_defaults",
    "prompt_path",
    "prompt_record",
    "stage1_command",
    "teacher_fingerprint",
]

STAGE1_TOOL = "tools/train_prompt.py"


def stage1_command(cfg_file: str = "<this config>", opts: Sequence[str] = ("[the same KEY VALUE overrides]",)) -> str:
    """The shell command of stage 1 for a run started with ``--cfg cfg_file`` and `opts`."""
    return " ".join(shlex.quote(a) if not a.startswith(("<", "[")) else a
                    for a in ["python", STAGE1_TOOL, "--cfg", cfg_file, *opts])


class PromptFileError(ConfigError):
    """Stage 2 found no usable prompt file. The message says how to make one; a tool that knows the
    config file and overrides of the run swaps in the exact command with :meth:`with_command`."""

    def __init__(self, problem: str, name: str) -> None:
        self.problem, self.name = problem, name
        super().__init__(self.with_command(stage1_command()))

    def with_command(self, command: str) -> str:
        return (f"{self.problem}: run `{command}` first (stage 1), "
                f"or set {self.name}.PROMPT_PATH to a prompt file.")


def prompt_defaults(num_stages: int = 2, low_band: bool = False, relation: bool = False) -> CN:
    """The keys every prompt-based method's section has (FreeKD's published settings where they exist)."""
    node = CN()
    node.NUM_STAGES = num_stages  # the last N entries of `feats` (stem excluded) of teacher and student
    node.DWT_LEVELS = 3
    node.TOKENS = 2  # T: paper 2, authors' detection configs 6
    node.DIVERSITY = "dice"  # "dice" (authors' code) or "jaccard" (paper)
    node.DIVERSITY_WEIGHT = 1.0  # lambda of stage 1
    node.LOW_BAND = low_band  # paper: also distil LL_L; authors' code: high bands only
    node.RELATION = relation  # paper: channel weights w_t * w_s; authors' code: none
    node.PROMPT_EPOCHS = 5
    node.PROMPT_LR = 0.01  # AdamW, cosine, no weight decay
    node.PROMPT_PATH = ""  # "": <LOG.PREFIX>/<EXPERIMENT.PROJECT>/prompts/<derived name>.pth
    return node


PROMPT_RULES = {"DIVERSITY": OneOf(DIVERSITY_KINDS), "PROMPT_LR": positive}


def check_section(section: CN, name: str) -> None:
    """The checks of a prompt method's section (:data:`PROMPT_RULES`, then the counts)."""
    check_rules(section, PROMPT_RULES, f"{name}.")
    if section.TOKENS < 1 or section.DWT_LEVELS < 1:
        raise ConfigError(f"{name}.TOKENS and {name}.DWT_LEVELS must be at least 1.")


def distilled_indices(num_maps: int, num_stages: int, name: str = "FREEKD", first: int = 1) -> List[int]:
    """Indices of the last `num_stages` of `num_maps` feature maps, none before index `first`
    (1 for a classifier's ``feats``, whose entry 0 is the stem; 0 for a dense model's captured maps)."""
    if not 1 <= num_stages <= num_maps - first:
        raise ConfigError(f"{name}.NUM_STAGES must be between 1 and {num_maps - first} here, got {num_stages}.")
    return list(range(num_maps - num_stages, num_maps))


def prompt_path(cfg: CN, name: str) -> str:
    """``cfg[name].PROMPT_PATH``, or the path derived from the run's output directory, teacher and prompt shape."""
    section = cfg[name]
    if section.PROMPT_PATH:
        return section.PROMPT_PATH
    file_name = (f"{name.lower()}_{cfg.DATASET.TYPE}_{cfg.DISTILLER.TEACHER}_last{section.NUM_STAGES}"
                 f"_T{section.TOKENS}_L{section.DWT_LEVELS}.pth")
    return os.path.join(cfg.LOG.PREFIX, cfg.EXPERIMENT.PROJECT, "prompts", file_name)


def build_prompts(channels: Sequence[int], section: CN) -> nn.ModuleList:
    """One freshly initialised :class:`FrequencyPrompt` per distilled feature level."""
    return nn.ModuleList(FrequencyPrompt(c, section.TOKENS, section.DWT_LEVELS) for c in channels)


@torch.no_grad()
def teacher_fingerprint(teacher: nn.Module) -> float:
    """Sum of the absolute values of the teacher's floating-point weights and buffers (tells teachers apart)."""
    return float(sum(t.double().abs().sum() for t in teacher.state_dict().values() if t.is_floating_point()))


def prompt_record(prompts: nn.ModuleList, teacher: nn.Module, cfg: CN, name: str, indices: Sequence[int],
                  **extra: Any) -> Dict[str, Any]:
    """What a prompt file holds (see the module docstring); `extra` adds e.g. epoch and accuracies."""
    return {
        "prompts": {k: v.detach().cpu() for k, v in prompts.state_dict().items()},
        "method": name,
        "teacher": cfg.DISTILLER.TEACHER,
        "teacher_fingerprint": teacher_fingerprint(teacher),
        "feature_indices": list(indices),
        "channels": [p.channels for p in prompts],
        "tokens": cfg[name].TOKENS,
        "levels": cfg[name].DWT_LEVELS,
        "cfg": cfg.dump(),
        **extra,
    }


def load_prompts(cfg: CN, name: str, teacher: nn.Module, indices: Sequence[int],
                 channels: Sequence[int]) -> nn.ModuleList:
    """The frozen prompts stage 1 saved for this teacher and these features; ConfigError saying how to
    make them when the file is missing or was learned for something else."""
    path = prompt_path(cfg, name)
    if not os.path.isfile(path):
        raise PromptFileError(f"{name} needs frequency prompts learned in the teacher, and there are none at {path}",
                              name)
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or not a prompt file: say which file and how to replace it
        raise PromptFileError(f"Prompt file {path} is unreadable ({type(err).__name__})", name) from None
    section = cfg[name]
    wanted = {"teacher": cfg.DISTILLER.TEACHER, "feature_indices": list(indices), "channels": list(channels),
              "tokens": section.TOKENS, "levels": section.DWT_LEVELS}
    found = {key: record.get(key) for key in wanted}
    if "prompts" not in record or found != wanted:
        raise PromptFileError(f"Prompt file {path} was learned for {found}, this run needs {wanted}", name)
    fingerprint = teacher_fingerprint(teacher)
    if abs(record.get("teacher_fingerprint", 0.0) - fingerprint) > 1e-6 * max(abs(fingerprint), 1.0):
        raise PromptFileError(f"Prompt file {path} was learned with other weights of teacher {cfg.DISTILLER.TEACHER}",
                              name)
    prompts = build_prompts(channels, section)
    prompts.load_state_dict(record["prompts"])
    return prompts.requires_grad_(False)


class PromptBandLoss:
    """FreeKD's masked band loss under frozen frequency prompts, for a distiller of any task.

    The contract: the distiller sets ``section`` (its config section name, built on
    :func:`prompt_defaults`) and, before calling :meth:`init_prompts`, ``teacher_indices`` (the
    distilled teacher maps) and ``teacher_channels`` (their channels); it then calls
    :meth:`frequency_loss` on the teacher maps and the student maps aligned to them. The loss,
    summed over levels, is

        sum_levels sum_k mean_{b,t,c,...} w_{b,c} | M_{k,t} * a_k - M_{k,t} * b_k |

    with ``M_k = sigmoid(P_k R_k)`` from the frozen prompt and the teacher band (no gradient), k over
    the high-band levels plus LL with ``LOW_BAND``, and w = 1, or with ``RELATION`` the paper's
    channel weights ``w_t * w_s`` (:class:`~mdistiller.losses.freekd.ChannelRelation`) of each level's
    map with the next deeper distilled map (the deepest with itself). The prompts come from the
    ``"PROMPTS"`` stage the distiller declares (:func:`load_prompts`).
    """

    section: str = ""
    teacher_indices: List[int]
    teacher_channels: List[int]

    def init_prompts(self, cfg: CN, teacher: nn.Module) -> None:
        """Load the frozen prompts of the distilled teacher maps and build the relation modules (RELATION)."""
        section = cfg[self.section]
        channels = list(self.teacher_channels)
        self.levels = section.DWT_LEVELS
        self.low_band = section.LOW_BAND
        self.prompts = load_prompts(cfg, self.section, teacher, self.teacher_indices, channels)
        self.relation_t: Optional[nn.ModuleList] = None
        self.relation_s: Optional[nn.ModuleList] = None
        if section.RELATION:
            deeper = channels[1:] + channels[-1:]
            self.relation_t = nn.ModuleList(ChannelRelation(c, d) for c, d in zip(channels, deeper))
            self.relation_s = nn.ModuleList(ChannelRelation(c, d) for c, d in zip(channels, deeper))

    def channel_weights(self, teacher_maps: Sequence[Tensor], student_maps: Sequence[Tensor]) -> List[Optional[Tensor]]:
        """Per level, ``w_t * w_s`` normalised to mean 1 (RELATION on), else None."""
        if self.relation_t is None:
            return [None] * len(teacher_maps)
        weights = []
        for i, (rel_t, rel_s) in enumerate(zip(self.relation_t, self.relation_s)):
            deep = min(i + 1, len(teacher_maps) - 1)
            weights.append(relation_weights(rel_t(teacher_maps[i], teacher_maps[deep]),
                                            rel_s(student_maps[i], student_maps[deep])))
        return weights

    def frequency_loss(self, teacher_maps: Sequence[Tensor], student_maps: Sequence[Tensor]) -> Tensor:
        """The band loss of the student maps (aligned to the teacher maps' shapes), summed over levels."""
        total = 0.0
        for prompt, t_map, s_map, weights in zip(self.prompts, teacher_maps, student_maps,
                                                 self.channel_weights(teacher_maps, student_maps)):
            teacher_bands = FrequencyBands.of(t_map, self.levels)
            with torch.no_grad():
                masks = prompt.masks(teacher_bands)
            total = total + freekd_loss(masks, teacher_bands, FrequencyBands.of(s_map, self.levels), self.low_band,
                                        weights)
        return total


class PromptDistiller(PromptBandLoss, Distiller):
    """A classification distiller whose loss is :class:`PromptBandLoss`, on the last ``NUM_STAGES``
    entries of ``feats`` of each model.

    Subclasses set :attr:`section` (their config section, built on :func:`prompt_defaults` plus
    ``LOSS.CE_WEIGHT`` and ``LOSS.FEAT_WEIGHT``), build their modules and call :meth:`init_prompts`.
    Stage 1 is the engine's ``"PROMPTS"`` stage.
    """

    stages = ("PROMPTS",)

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: CN) -> None:
        """Read the loss weights and find the distilled stages (the last NUM_STAGES ``feats`` of each
        model, probed at the input size): ``teacher_indices``, ``student_indices``, ``teacher_map_shapes``
        ((C, h, w) of each distilled teacher map) and ``student_channels``."""
        super().__init__(student, teacher)
        section = cfg[self.section]
        check_section(section, self.section)
        self.ce_loss_weight = section.LOSS.CE_WEIGHT
        self.feat_loss_weight = section.LOSS.FEAT_WEIGHT
        size = image_size(cfg)
        teacher_shapes = [tuple(s[1:]) for s in feature_shapes(teacher, size)["feats"]]
        student_shapes = [tuple(s[1:]) for s in feature_shapes(student, size)["feats"]]
        self.teacher_indices = distilled_indices(len(teacher_shapes), section.NUM_STAGES, self.section)
        self.student_indices = distilled_indices(len(student_shapes), section.NUM_STAGES, self.section)
        self.teacher_map_shapes: List[Tuple[int, ...]] = [teacher_shapes[i] for i in self.teacher_indices]
        self.student_channels = [student_shapes[i][0] for i in self.student_indices]

    @property
    def teacher_channels(self) -> List[int]:
        return [shape[0] for shape in self.teacher_map_shapes]
