"""Methods, one module each. Importing this package registers the built-in ones."""

from semiseg.methods import (  # noqa: F401
    cct,
    cmt,
    cps,
    cutmix,
    ensemble,
    mean_teacher,
    must,
    segpl,
    self_training,
    supervised,
    ua_mt,
    ucmt,
)
from semiseg.methods.base import Batch, Method, MethodConfig, MethodContext, NetSpec, Pass, Progress, StepOut
from semiseg.methods.registry import available_methods, get_method, register

__all__ = [
    "Batch",
    "Method",
    "MethodConfig",
    "MethodContext",
    "NetSpec",
    "Pass",
    "Progress",
    "StepOut",
    "available_methods",
    "get_method",
    "register",
]
