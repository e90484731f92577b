"""The math of every method: functions and modules over tensors only (no models, no cfg)."""

from mdistiller.losses.at import at_loss
from mdistiller.losses.fitnet import ConvReg
from mdistiller.losses.kd import kd_loss
from mdistiller.losses.kdsvd import kdsvd_loss
from mdistiller.losses.nst import nst_loss
from mdistiller.losses.ofd import ConnectorConvBN, ofd_loss, ofd_margin
from mdistiller.losses.pkt import pkt_loss
from mdistiller.losses.rkd import rkd_loss
from mdistiller.losses.sp import sp_loss
from mdistiller.losses.vid import vid_loss, vid_regressor

__all__ = [
    "ConnectorConvBN",
    "ConvReg",
    "at_loss",
    "kd_loss",
    "kdsvd_loss",
    "nst_loss",
    "ofd_loss",
    "ofd_margin",
    "pkt_loss",
    "rkd_loss",
    "sp_loss",
    "vid_loss",
    "vid_regressor",
]
