"""The configuration: MDistiller's sections, keys and defaults, plus each method's own section.

`CFG` holds every default. Build a run's config with :func:`build_cfg` (defaults <- YAML file <-
command line); merging is strict: an unknown key fails naming the closest valid keys and a value
of the wrong type fails naming the expected type (an int is accepted where a float is declared).

`CFG` is a :class:`Config`: yacs' CfgNode whose ``merge_from_file`` / ``merge_from_list`` are the
merges here, so an MDistiller script (``cfg = CFG.clone(); cfg.merge_from_file(f)``) gets the same
result as ``tools/train.py``. ``EXPERIMENT.PLUGINS`` names modules of one's own that are imported
before the rest of a config merges: the methods, models and datasets they register are then known,
and each new method's config section is added (:func:`import_plugins`).
"""

import ast
import difflib
import importlib
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml
from yacs.config import CfgNode as CN

from mdistiller.config_checks import InRange, OneOf, Rules, check_rules, fraction, non_negative, probability
from mdistiller.dataset.augment import INTERPOLATIONS
from mdistiller.dataset.base import image_size
from mdistiller.distillers import method_defaults, method_rules
from mdistiller.engine.mixing import MIXUP_MODES
from mdistiller.engine.optim import OPTIMIZERS
from mdistiller.engine.schedule import SCHEDULE_STYLES, SCHEDULERS
from mdistiller.engine.utils import AMP_DTYPES
from mdistiller.errors import ConfigError



def add_method_sections(cfg: CN) -> None:
    """Give `cfg` the config section (its defaults) of every method registered since it was made."""
    missing = [name for name in method_defaults if name not in cfg]
    if not missing:
        return
    frozen = cfg.is_frozen()
    cfg.defrost()
    for name in missing:
        cfg[name] = method_defaults[name].clone()
    if frozen:
        cfg.freeze()


class Config(CN):
    """The root of the configuration: yacs' CfgNode with this module's strict merges; `clone`
    carries the sections of methods registered after the node was made."""

    def merge_from_file(self, cfg_filename: str) -> None:
        merge_file(self, cfg_filename)

    def merge_from_list(self, cfg_list: Sequence[str]) -> None:
        merge_overrides(self, cfg_list)

    def clone(self) -> "Config":
        copy = super().clone()
        add_method_sections(copy)
        return copy


CFG = Config()

CFG.EXPERIMENT = CN()
CFG.EXPERIMENT.PROJECT = "distill"
CFG.EXPERIMENT.NAME = ""
CFG.EXPERIMENT.TAG = "default"
CFG.EXPERIMENT.SEED = 0
CFG.EXPERIMENT.DETERMINISTIC = False
CFG.EXPERIMENT.PLUGINS = []  # modules to import first: methods, models, datasets of one's own (also --plugin)
CFG.EXPERIMENT.STAGE = "TRAIN"  # set by the engine: a stage's name (e.g. PROMPTS) in the records of that stage

CFG.DATASET = CN()
CFG.DATASET.TYPE = "cifar100"
CFG.DATASET.ROOT = "data"
CFG.DATASET.DOWNLOAD = False
CFG.DATASET.IMAGE_SIZE = 0  # 0: the dataset's standard size (cifar100 32, imagenet 224, tiny_imagenet 64, digits 16)
CFG.DATASET.NUM_WORKERS = 2
CFG.DATASET.FAST_AUG = True
CFG.DATASET.INTERPOLATION = "bilinear"  # bilinear or bicubic resizing: ImageFolder sets, CIFAR-100 above 32 px
CFG.DATASET.RAND_AUGMENT = ""  # ImageFolder sets and CIFAR-100: timm's RandAugment string, e.g. rand-m9-mstd0.5-inc1; "" = off
CFG.DATASET.RANDOM_ERASING = 0.0  # ImageFolder sets and CIFAR-100: probability of timm's RandomErasing (per-pixel noise); 0 = off
CFG.DATASET.PIN_MEMORY = "auto"
CFG.DATASET.PERSISTENT_WORKERS = True
# Below 1: train on a stratified fraction of the training split, drawn with EXPERIMENT.SEED (the
# small-data setting of the digits demo: the teacher on the whole split, the students on a fraction).
CFG.DATASET.TRAIN_FRACTION = 1.0
CFG.DATASET.SKIP_UNREADABLE = False  # ImageFolder sets: skip an undecodable image with a warning instead of failing
CFG.DATASET.TEST = CN()
CFG.DATASET.TEST.BATCH_SIZE = 64

CFG.DISTILLER = CN()
CFG.DISTILLER.TYPE = "NONE"
CFG.DISTILLER.TEACHER = "ResNet50"
CFG.DISTILLER.STUDENT = "resnet32"
CFG.DISTILLER.TEACHER_WEIGHTS = ""
CFG.DISTILLER.STUDENT_WEIGHTS = ""  # start the student from these (timm:pretrained, torchvision:<Enum>.<NAME>, a file)

# Constructor arguments and feature taps of timm: / torchvision: models (mdistiller/models/external.py).
CFG.MODEL = CN()
CFG.MODEL.STUDENT_KWARGS = CN(new_allowed=True)  # e.g. {img_size: 32, patch_size: 4, drop_path_rate: 0.1}
CFG.MODEL.TEACHER_KWARGS = CN(new_allowed=True)
CFG.MODEL.STUDENT_FEATURES = []  # module paths of the stage taps; [] = the adapter's default taps
CFG.MODEL.TEACHER_FEATURES = []

CFG.SOLVER = CN()
CFG.SOLVER.TRAINER = "base"
CFG.SOLVER.BATCH_SIZE = 64
CFG.SOLVER.EPOCHS = 240
CFG.SOLVER.LR = 0.05
CFG.SOLVER.LR_SCHEDULER = "step"
CFG.SOLVER.MIN_LR = 0.0  # where the cosine schedule ends (timm's min_lr)
CFG.SOLVER.POLY_POWER = 0.9  # LR_SCHEDULER poly: (LR - POLY_MIN_LR) * (1 - progress) ** POLY_POWER + POLY_MIN_LR
CFG.SOLVER.POLY_MIN_LR = 0.0001  # mmsegmentation's schedules (min_lr=1e-4)
CFG.SOLVER.LR_DECAY_STAGES = [150, 180, 210]
CFG.SOLVER.LR_DECAY_RATE = 0.1
CFG.SOLVER.WARMUP_EPOCHS = 0
CFG.SOLVER.WEIGHT_DECAY = 0.0001
CFG.SOLVER.MOMENTUM = 0.9
CFG.SOLVER.TYPE = "SGD"
CFG.SOLVER.DEVICE = "auto"
CFG.SOLVER.AMP = "auto"
CFG.SOLVER.AMP_DTYPE = "bfloat16"
CFG.SOLVER.CHANNELS_LAST = "auto"
CFG.SOLVER.FAST_TEACHER = True
CFG.SOLVER.COMPILE = False
CFG.SOLVER.LABEL_SMOOTHING = 0.0
CFG.SOLVER.GRAD_CLIP = 0.0  # max gradient norm of the learnable parameters; 0 = off
CFG.SOLVER.SKIP_NONFINITE = False  # skip a batch whose loss is NaN / inf (counted in the log) instead of stopping
CFG.SOLVER.DOT = CN()
CFG.SOLVER.DOT.DELTA = 0.075
# timm's recipes (DeiT, OFA-KD; docs/recipe.md): weight-decay exclusions and the schedule's shape.
CFG.SOLVER.NO_WD_1D = False  # no weight decay on 1-D parameters and biases (norms, biases): timm's filter_bias_and_bn
CFG.SOLVER.NO_WD_TOKENS = False  # nor on what a module's no_weight_decay() names (ViT / DeiT: pos_embed, cls / dist token)
CFG.SOLVER.SCHEDULE_STYLE = "mdistiller"  # or timm: warm-up from WARMUP_LR, the cosine over all EPOCHS (engine/schedule.py)
CFG.SOLVER.WARMUP_LR = 0.0001  # SCHEDULE_STYLE timm: the first epoch's LR (timm's warmup_lr_init; OFA-KD's default)

# Mixup / CutMix on training batches (timm's Mixup; student and teacher see the same mixed images).
CFG.MIXUP = CN()
CFG.MIXUP.ALPHA = 0.0  # mixup's Beta(alpha, alpha); 0 = off
CFG.MIXUP.CUTMIX = 0.0  # cutmix's Beta(alpha, alpha); 0 = off
CFG.MIXUP.PROB = 1.0  # probability of mixing a batch
CFG.MIXUP.SWITCH_PROB = 0.5  # probability of cutmix when both are on
CFG.MIXUP.MODE = "batch"  # batch, pair or elem

# An exponential moving average of the student (timm's ModelEmaV3), evaluated and checkpointed.
CFG.EMA = CN()
CFG.EMA.ENABLE = False
CFG.EMA.DECAY = 0.99996
CFG.EMA.WARMUP = False

CFG.DISTRIBUTED = CN()
CFG.DISTRIBUTED.BACKEND = "auto"
CFG.DISTRIBUTED.SYNC_BN = False
CFG.DISTRIBUTED.SCALE_LR = False

CFG.LOG = CN()
CFG.LOG.TENSORBOARD_FREQ = 500
CFG.LOG.SAVE_CHECKPOINT_FREQ = 40
CFG.LOG.PREFIX = "./output"
CFG.LOG.WANDB = False
CFG.LOG.PROGRESS_BAR = True

# Switches that take True, False or "auto" (decided per device: mdistiller/engine/fast_path.py).
AUTO_BOOL_KEYS = ("SOLVER.AMP", "SOLVER.CHANNELS_LAST", "DATASET.PIN_MEMORY")

add_method_sections(CFG)

# The values a key's type cannot check (mdistiller/config_checks.py); each method declares its
# section's with it (register_distiller's `rules`). Checked once a config is merged (check_cfg).
# Registry names are checked by their registries, with the same "did you mean": DATASET.TYPE,
# DISTILLER.TYPE and the models before any data is read (engine/build.py), SOLVER.TRAINER after.
RULES: Rules = {
    "DATASET.INTERPOLATION": OneOf(INTERPOLATIONS),
    "DATASET.RANDOM_ERASING": probability,
    "DATASET.TRAIN_FRACTION": fraction,
    "SOLVER.TYPE": OneOf(OPTIMIZERS),
    "SOLVER.LR_SCHEDULER": OneOf(SCHEDULERS),
    "SOLVER.AMP_DTYPE": OneOf(AMP_DTYPES),
    "SOLVER.LR": non_negative,
    "SOLVER.MIN_LR": non_negative,
    "SOLVER.POLY_MIN_LR": non_negative,
    "SOLVER.LR_DECAY_RATE": fraction,
    "SOLVER.WEIGHT_DECAY": non_negative,
    "SOLVER.MOMENTUM": InRange(0.0, 1.0, high_open=True),
    "SOLVER.LABEL_SMOOTHING": InRange(0.0, 1.0, high_open=True),
    "SOLVER.GRAD_CLIP": non_negative,
    "SOLVER.DOT.DELTA": non_negative,
    "SOLVER.SCHEDULE_STYLE": OneOf(SCHEDULE_STYLES),
    "SOLVER.WARMUP_LR": non_negative,
    "MIXUP.ALPHA": non_negative,
    "MIXUP.CUTMIX": non_negative,
    "MIXUP.PROB": probability,
    "MIXUP.SWITCH_PROB": probability,
    "MIXUP.MODE": OneOf(MIXUP_MODES),
    "EMA.DECAY": InRange(0.0, 1.0, high_open=True),
}


def check_cfg(cfg: CN, rules: Rules = RULES, section_rules: Optional[Dict[str, Rules]] = None) -> None:
    """ConfigError, in one line, for the first value of `cfg` that breaks `rules` or a method
    section's rules (`section_rules`: the registered methods' by default)."""
    check_rules(cfg, rules)
    for name, rules_of_section in (method_rules if section_rules is None else section_rules).items():
        if name in cfg:
            check_rules(cfg[name], rules_of_section, f"{name}.")


PLUGINS_KEY = "EXPERIMENT.PLUGINS"


def import_plugins(names: Iterable[str]) -> None:
    """Import each module in `names` (it registers its methods, models, datasets, stages) and add the
    new methods' sections to CFG; ConfigError saying how to make a module importable otherwise."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"Plugin '{name}' cannot be imported ({err}); install its package or put the "
                              "directory holding it on PYTHONPATH.") from None
    add_method_sections(CFG)


def _leaf_keys(node: CN, prefix: str = "") -> List[str]:
    """The full names of the keys that hold values (sections left out: they cannot be set)."""
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys += _leaf_keys(value, full + ".") if isinstance(value, CN) else [full]
    return keys


def _unknown_key(cfg: CN, full_key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(full_key, _leaf_keys(cfg), n=3, cutoff=0.5)
    hint = f"; closest valid keys: {', '.join(close)}" if close else ""
    return ConfigError(f"Unknown config key '{full_key}' in {source}{hint}.")


def _coerce(value: Any, default: Any, full_key: str, source: str) -> Any:
    """`value` converted to the type of `default`, or a ConfigError naming the expected type."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
    elif default is None or isinstance(value, type(default)):
        return value
    raise ConfigError(
        f"Config key '{full_key}' in {source} expects {type(default).__name__} "
        f"(default {default!r}), got {type(value).__name__} {value!r}."
    )


def _coerce_auto_bool(value: Any, full_key: str, source: str) -> Any:
    """True, False or "auto" for a key of AUTO_BOOL_KEYS; a ConfigError for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[value.lower()]
    raise ConfigError(f"Config key '{full_key}' in {source} expects True, False or auto, got {value!r}.")


def _set(cfg: CN, full_key: str, value: Any, source: str) -> None:
    node = cfg
    parts = full_key.split(".")
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], CN):
            raise _unknown_key(cfg, full_key, source)
        node = node[part]
    leaf = parts[-1]
    if leaf not in node and node.is_new_allowed():  # a free-form section: model constructor arguments
        node[leaf] = CN(value, new_allowed=True) if isinstance(value, dict) else value
        return
    if leaf not in node:
        raise _unknown_key(cfg, full_key, source)
    if isinstance(node[leaf], CN):
        if not isinstance(value, dict):
            raise ConfigError(f"Config key '{full_key}' in {source} is a section; set its keys instead.")
        for key, sub_value in value.items():
            _set(cfg, f"{full_key}.{key}", sub_value, source)
        return
    if full_key in AUTO_BOOL_KEYS:
        node[leaf] = _coerce_auto_bool(value, full_key, source)
        return
    node[leaf] = _coerce(value, node[leaf], full_key, source)
    if full_key == PLUGINS_KEY:
        import_plugins(node[leaf])
        if isinstance(cfg, Config):  # the classification methods' sections (mdistiller_dense keeps its own)
            add_method_sections(cfg)


def _merge_mapping(cfg: CN, data: Dict[str, Any], source: str) -> None:
    """Merge the sections of `data` into `cfg`; EXPERIMENT first, so its PLUGINS are imported before
    their methods' sections are merged."""
    for key in sorted(data, key=lambda k: k != "EXPERIMENT"):
        _set(cfg, key, data[key], source)


def _decode(text: str) -> Any:
    """A command-line value: a Python / YAML literal where it parses, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_overrides(opts: Sequence[str]) -> List[Tuple[str, str]]:
    """`KEY VALUE`, `KEY=VALUE` and `--KEY=VALUE` command-line overrides as (key, raw value) pairs."""
    pairs = []
    items = list(opts)
    i = 0
    while i < len(items):
        item = items[i].lstrip("-") if items[i].startswith("--") else items[i]
        if "=" in item:
            key, raw = item.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(items):
                raise ConfigError(f"Override '{items[i]}' has no value: write KEY VALUE or KEY=VALUE.")
            key, raw = item, items[i + 1]
            i += 2
        pairs.append((key, raw))
    return pairs


def merge_file(cfg: CN, path: str) -> None:
    """Merge a YAML file into `cfg`, strictly; a `_BASE_: other.yaml` entry is merged first."""
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path}. Pass an existing YAML file to --cfg.")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {str(err).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of sections, not {type(data).__name__}.")
    base = data.pop("_BASE_", None)
    if base:
        merge_file(cfg, os.path.join(os.path.dirname(path), base))
    _merge_mapping(cfg, data, path)


def merge_overrides(cfg: CN, opts: Iterable[str]) -> None:
    """Merge command-line overrides into `cfg`, strictly."""
    for key, raw in sorted(parse_overrides(list(opts)), key=lambda pair: pair[0] != PLUGINS_KEY):
        _set(cfg, key, _decode(raw), "the command line")


def resolve_image_size(cfg: CN) -> None:
    """Replace DATASET.IMAGE_SIZE 0 by the standard input size of DATASET.TYPE."""
    cfg.DATASET.IMAGE_SIZE = image_size(cfg)


def merge_cfg(defaults: CN, cfg_file: Optional[str] = None, opts: Sequence[str] = ()) -> CN:
    """A copy of `defaults` <- YAML file <- command line, strictly merged, not frozen."""
    cfg = defaults.clone()
    if cfg_file:
        merge_file(cfg, cfg_file)
    merge_overrides(cfg, opts)
    return cfg


def build_cfg(cfg_file: Optional[str] = None, opts: Sequence[str] = ()) -> CN:
    """Defaults <- YAML file <- command line, its values checked (:func:`check_cfg`), DATASET.IMAGE_SIZE
    resolved; returns a frozen copy."""
    cfg = merge_cfg(CFG, cfg_file, opts)
    check_cfg(cfg)
    resolve_image_size(cfg)
    cfg.freeze()
    return cfg


def dump_cfg(cfg: CN) -> str:
    """The config as YAML text (what the run directory and checkpoints keep)."""
    return cfg.dump()


def load_cfg_text(text: str, defaults: Optional[CN] = None) -> CN:
    """A config saved by :func:`dump_cfg`, merged strictly over `defaults` (the current CFG by default)."""
    cfg = (CFG if defaults is None else defaults).clone()
    _merge_mapping(cfg, yaml.safe_load(text) or {}, "the saved config")
    cfg.freeze()
    return cfg


def show_cfg(cfg: CN) -> None:
    """Print the sections that matter for this run, as MDistiller does."""
    shown = CN()
    for section in ("EXPERIMENT", "DATASET", "DISTILLER", "SOLVER", "LOG"):
        shown[section] = cfg[section]
    if cfg.DISTILLER.TYPE in cfg:
        shown[cfg.DISTILLER.TYPE] = cfg[cfg.DISTILLER.TYPE]
    print(f"CONFIG:\n{shown.dump()}")
