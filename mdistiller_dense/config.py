"""The dense-prediction configuration: the engine's EXPERIMENT / SOLVER / DISTRIBUTED / LOG sections
(same keys, detection defaults), the dense DATASET / MODEL / DISTILLER sections and one section per
dense method (declared next to each distiller in mdistiller_dense/distillers/).

``best_acc`` / ``test_acc`` in logs and checkpoints hold the task's main metric in percent: COCO
AP@[.50:.95] for detectors, mIoU for segmenters.
"""

from typing import Optional, Sequence

from yacs.config import CfgNode as CN

from mdistiller.config_checks import InRange, OneOf, Rules, non_negative, probability
from mdistiller.engine.cfg import CFG, RULES, check_cfg, load_cfg_text, merge_cfg
from mdistiller_dense.data import DATASET_TYPES
from mdistiller_dense.distillers import dense_distiller_dict, dense_method_defaults
from mdistiller_dense.distillers._base import dense_method_rules
from mdistiller_dense.models import FPN_EXTRA, HEAD_LAYOUTS
from mdistiller_dense.sam.distillers import SAM_DEFAULTS, sam_distiller_dict, sam_method_defaults, sam_method_rules

__all__ = ["DENSE_CFG", "DENSE_RULES", "build_dense_cfg", "check_dense_cfg", "load_dense_cfg_text"]

SHARED_SECTIONS = ("EXPERIMENT", "SOLVER", "DISTRIBUTED", "LOG")  # the engine's, with detection defaults

DENSE_CFG = CN()
for _section in SHARED_SECTIONS:
    DENSE_CFG[_section] = CFG[_section].clone()
DENSE_CFG.EXPERIMENT.PROJECT = "dense"
DENSE_CFG.SOLVER.TRAINER = "dense"
DENSE_CFG.SOLVER.BATCH_SIZE = 16
DENSE_CFG.SOLVER.EPOCHS = 12
DENSE_CFG.SOLVER.LR = 0.01
DENSE_CFG.SOLVER.LR_DECAY_STAGES = [8, 11]
DENSE_CFG.SOLVER.WEIGHT_DECAY = 0.0001
DENSE_CFG.SOLVER.CHANNELS_LAST = False   # the detectors' transforms hand over NCHW batches
DENSE_CFG.SOLVER.FAST_TEACHER = False    # the teacher's backbone runs under hooks
DENSE_CFG.SOLVER.GRAD_CLIP = 0.0         # max gradient norm; 0 = off (CanKD's detection recipe: 35)
DENSE_CFG.SOLVER.WARMUP_ITERS = 0        # linear warm-up over the first iterations (mmdetection: 500)
DENSE_CFG.SOLVER.WARMUP_RATIO = 0.001    # the warm-up's starting LR multiplier (mmdetection's warmup_ratio)
DENSE_CFG.SOLVER.ITERS = 0               # > 0: a run of ITERS iterations (EPOCHS unused; mmsegmentation's 80k)
DENSE_CFG.SOLVER.VAL_INTERVAL = 8000     # ITERS runs: validate and checkpoint every VAL_INTERVAL iterations
DENSE_CFG.LOG.SAVE_CHECKPOINT_FREQ = 1000

DENSE_CFG.DATASET = CN()
DENSE_CFG.DATASET.TYPE = "coco"           # coco | segmentation | sa1b | shapes (generated on first use)
DENSE_CFG.DATASET.ROOT = "data/coco"
DENSE_CFG.DATASET.TRAIN_IMAGES = "train2017"
DENSE_CFG.DATASET.TRAIN_ANNOTATIONS = "annotations/instances_train2017.json"
DENSE_CFG.DATASET.TRAIN_MASKS = ""
DENSE_CFG.DATASET.VAL_IMAGES = "val2017"
DENSE_CFG.DATASET.VAL_ANNOTATIONS = "annotations/instances_val2017.json"
DENSE_CFG.DATASET.VAL_MASKS = ""
DENSE_CFG.DATASET.IMAGE_SUFFIX = ".png"   # segmentation folders: image <stem><IMAGE_SUFFIX> ...
DENSE_CFG.DATASET.MASK_SUFFIX = ".png"    # ... pairs with label map <stem><MASK_SUFFIX>
DENSE_CFG.DATASET.NUM_CLASSES = 0         # segmentation: classes of the label maps; detection: from the JSON
DENSE_CFG.DATASET.IGNORE_INDEX = 255
DENSE_CFG.DATASET.NUM_TRAIN = 0           # 0: every image; shapes: the number generated (0: 200)
DENSE_CFG.DATASET.NUM_VAL = 0             # 0: every image; shapes: the number generated (0: 50)
DENSE_CFG.DATASET.FLIP_PROB = 0.5
DENSE_CFG.DATASET.SCALE_RANGE = [1.0, 1.0]
DENSE_CFG.DATASET.CROP_SIZE = 0
DENSE_CFG.DATASET.NUM_WORKERS = 2
DENSE_CFG.DATASET.TEST = CN()
DENSE_CFG.DATASET.TEST.BATCH_SIZE = 8
DENSE_CFG.DATASET.SHAPES = CN()
DENSE_CFG.DATASET.SHAPES.IMAGE_SIZE = 128
DENSE_CFG.DATASET.SHAPES.MAX_OBJECTS = 4
DENSE_CFG.DATASET.SHAPES.MIN_OBJECT_SIZE = 16
DENSE_CFG.DATASET.SHAPES.MAX_OBJECT_SIZE = 56
DENSE_CFG.DATASET.SHAPES.SEED = 0

DENSE_CFG.MODEL = CN()
DENSE_CFG.MODEL.MIN_SIZE = 800
DENSE_CFG.MODEL.MAX_SIZE = 1333
DENSE_CFG.MODEL.TRAINABLE_BACKBONE_LAYERS = 3
DENSE_CFG.MODEL.DETECTIONS_PER_IMAGE = 100
DENSE_CFG.MODEL.AUX_LOSS = False          # segmenters: FCN head on layer3, weight AUX_WEIGHT
DENSE_CFG.MODEL.AUX_WEIGHT = 0.4
DENSE_CFG.MODEL.DCN_STAGES = []           # deformable 3x3 convs in these stages (2..5 = c2..c5) of the student /
#                                           a model trained alone: [3, 4, 5] = mmdetection's dconv_c3-c5
DENSE_CFG.MODEL.TEACHER_DCN_STAGES = []   # the same for the teacher (FreeKD / CanKD: X101-DCN teacher, plain R50)
DENSE_CFG.MODEL.DEEP_STEM = False         # mmsegmentation's ResNetV1c stem (three 3x3 convs), teacher and student
DENSE_CFG.MODEL.FPN_EXTRA = "output"      # FCOS / RetinaNet P6 from P5 (output: torchvision v1, mmdet FCOS)
#                                           or from C5 (input: mmdetection's RetinaNet, torchvision v2)
DENSE_CFG.MODEL.SEG_HEAD_LAYOUT = "torchvision"  # or mmseg: fcn / deeplabv3 with mmsegmentation's FCNHead / ASPPHead

DENSE_CFG.DISTILLER = CN()
DENSE_CFG.DISTILLER.TYPE = "NONE"
DENSE_CFG.DISTILLER.TEACHER = "fcos_resnet101_fpn"
DENSE_CFG.DISTILLER.STUDENT = "fcos_resnet50_fpn"
DENSE_CFG.DISTILLER.TEACHER_WEIGHTS = ""           # checkpoint path or torchvision:<Enum>.<NAME>
DENSE_CFG.DISTILLER.STUDENT_BACKBONE_WEIGHTS = ""  # e.g. torchvision:ResNet50_Weights.IMAGENET1K_V1
DENSE_CFG.DISTILLER.STUDENT_FEATURES = []          # module names to distil; [] = FPN / last stage
DENSE_CFG.DISTILLER.TEACHER_FEATURES = []

for _name, _defaults in dense_method_defaults.items():
    DENSE_CFG[_name] = _defaults.clone()

# Segment Anything (mdistiller_dense/sam/): input size, prompts, SAM's loss weights, stage 1, stores.
DENSE_CFG.SAM = SAM_DEFAULTS.clone()
for _name, _defaults in sam_method_defaults.items():
    DENSE_CFG[_name] = _defaults.clone()


class DenseMethodNames:
    """The names DISTILLER.TYPE takes: the detection / segmentation methods and the SAM ones, read when
    checked (so plugins' registrations count)."""

    def __iter__(self):
        yield from dense_distiller_dict
        yield from (name for name in sam_distiller_dict if name not in dense_distiller_dict)


# The engine's checks of the sections shared with it, and the dense sections' (mdistiller/config_checks.py).
DENSE_RULES: Rules = {
    **{key: rule for key, rule in RULES.items() if key.split(".")[0] in SHARED_SECTIONS},
    "DATASET.TYPE": OneOf(DATASET_TYPES),
    "DATASET.FLIP_PROB": probability,
    "DISTILLER.TYPE": OneOf(DenseMethodNames()),
    "MODEL.FPN_EXTRA": OneOf(FPN_EXTRA),
    "MODEL.SEG_HEAD_LAYOUT": OneOf(HEAD_LAYOUTS),
    "MODEL.AUX_WEIGHT": non_negative,
    "SOLVER.WARMUP_RATIO": InRange(0.0, 1.0),
}


def check_dense_cfg(cfg: CN) -> None:
    """ConfigError, in one line, for the first value of a dense config that breaks DENSE_RULES or a
    dense method section's rules."""
    check_cfg(cfg, DENSE_RULES, {**dense_method_rules, **sam_method_rules})


def build_dense_cfg(cfg_file: Optional[str] = None, opts: Sequence[str] = ()) -> CN:
    """Dense defaults <- YAML file <- command line, strictly merged and checked; frozen."""
    cfg = merge_cfg(DENSE_CFG, cfg_file, opts)
    check_dense_cfg(cfg)
    cfg.freeze()
    return cfg


def load_dense_cfg_text(text: str) -> CN:
    """A dense config saved in a checkpoint or run directory."""
    return load_cfg_text(text, DENSE_CFG)
