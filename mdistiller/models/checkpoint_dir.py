"""Where teacher checkpoints live: ``download_ckpts/`` at the top of the clone, as in MDistiller.

Set the environment variable ``MDISTILLER_CKPT_ROOT`` to use another directory with the same layout
(``cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth``, ``imagenet_teachers/MobileNetV1.pth``, ...),
for example a shared store on a cluster. It is read when :mod:`mdistiller.models` is imported.
"""

import os

CKPT_ROOT_ENV = "MDISTILLER_CKPT_ROOT"

_REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def download_ckpts_dir() -> str:
    """``$MDISTILLER_CKPT_ROOT`` when set, else ``<repo>/download_ckpts``."""
    return os.path.abspath(os.path.expanduser(os.environ.get(CKPT_ROOT_ENV) or os.path.join(_REPO_ROOT, "download_ckpts")))


def cifar_teacher_checkpoint(name: str) -> str:
    """MDistiller's path of the CIFAR-100 teacher `name`: ``cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth``."""
    return os.path.join(download_ckpts_dir(), "cifar_teachers", f"{name}_vanilla", "ckpt_epoch_240.pth")
