"""What every tool shares: user errors become one line on stderr and exit status 2; `--resume`."""

import os
import re
import sys
from typing import Callable, List, Optional, Sequence, Tuple, Union

from yacs.config import CfgNode as CN

from mdistiller.engine.cfg import build_cfg, check_cfg, import_plugins, load_cfg_text, merge_overrides
from mdistiller.engine.checkpoint import load_checkpoint
from mdistiller.errors import CheckpointError, ConfigError, TrainingStopped, UserError


def run_tool(main: Callable[[], object]) -> None:
    """Run `main()`; a UserError prints `error: <message>` and exits 2, without a traceback.

    A run stopped by SIGINT / SIGTERM (:class:`TrainingStopped`) prints how to resume and exits with
    128 + the signal number, as a process killed by that signal would.
    """
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as stop:
        print(str(stop), file=sys.stderr)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


CONFIG_KEY = re.compile(r"^(--)?[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+(=.*)?$")


def split_resume(argv: List[str]) -> Tuple[List[str], Union[bool, str]]:
    """Take `--resume [PATH]` / `--resume=PATH` out of argv; PATH is optional."""
    rest, resume = [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--resume="):
            resume = arg.split("=", 1)[1]
        elif arg == "--resume":
            resume = True
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is not None and not following.startswith("-") and not CONFIG_KEY.match(following):
                resume = following
                i += 1
        else:
            rest.append(arg)
        i += 1
    if isinstance(resume, str) and not os.path.exists(resume):
        raise CheckpointError(f"Nothing to resume at {resume}: give a run directory or a checkpoint file.")
    return rest, resume


def resume_target(resume: Union[bool, str]) -> Tuple[Optional[str], Union[bool, str]]:
    """(run directory to keep writing in, checkpoint to load) for a --resume argument."""
    if isinstance(resume, str):
        if os.path.isdir(resume):
            return resume, os.path.join(resume, "latest")
        return os.path.dirname(os.path.abspath(resume)), resume
    return None, resume


def saved_cfg(checkpoint: str, opts: Sequence[str], load_text: Callable[[str], CN] = load_cfg_text,
              check: Callable[[CN], None] = check_cfg) -> CN:
    """The config a checkpoint was trained with (read by `load_text`: mdistiller_dense passes its
    own), the command-line overrides merged on top and the result checked by `check`.

    Without the checkpoint (a run stopped before its first one), the run's own `cfg.yaml` beside it.
    """
    run_cfg_file = os.path.join(os.path.dirname(checkpoint), "cfg.yaml")
    if os.path.isfile(checkpoint):
        text = load_checkpoint(checkpoint).get("cfg")
    elif os.path.isfile(run_cfg_file):
        with open(run_cfg_file) as f:
            text = f.read()
    else:
        raise CheckpointError(f"Neither {checkpoint} nor {run_cfg_file} exists yet: pass the run's config file "
                              "with --cfg to start it.")
    if not text:
        raise CheckpointError(f"{checkpoint} holds no config: pass the run's config file with --cfg.")
    cfg = load_text(text)
    cfg.defrost()
    merge_overrides(cfg, opts)
    check(cfg)
    cfg.freeze()
    return cfg


def run_cfg(cfg_file: str, opts: Sequence[str], resume: Union[bool, str], plugins: Sequence[str] = (),
            build: Callable[[str, Sequence[str]], CN] = build_cfg,
            load_text: Callable[[str], CN] = load_cfg_text, check: Callable[[CN], None] = check_cfg) -> CN:
    """The config of a training run: `cfg_file` <- `opts` (by `build`), or, resuming a checkpoint
    without a file, the checkpoint's own config <- `opts` (by `load_text`, checked by `check`). The `plugins` (``--plugin``)
    are imported first and added to EXPERIMENT.PLUGINS, so the run's saved config imports them too."""
    import_plugins(plugins)
    if cfg_file or not resume:
        cfg = build(cfg_file, opts)
    elif isinstance(resume, str):
        cfg = saved_cfg(resume, opts, load_text, check)
    else:
        raise ConfigError("--resume without a path needs --cfg to find the run; or give the run directory: "
                          "--resume output/<project>/<name>.")
    if plugins:
        cfg.defrost()
        cfg.EXPERIMENT.PLUGINS = list(dict.fromkeys([*cfg.EXPERIMENT.PLUGINS, *plugins]))
        cfg.freeze()
    return cfg
