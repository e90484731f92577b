"""The math of every method: functions and modules over tensors only (no models, no cfg)."""

from mdistiller.losses.kd import kd_loss

__all__ = ["kd_loss"]
