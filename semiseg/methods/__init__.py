"""Methods, one module each. Importing this package registers the built-in ones."""

from semiseg.methods import (  # noqa: F401
    ad_mt,
    bcp,
    cct,
    cmt,
    cps,
    cutmix,
    dual_uncertainty,
    ensemble,
    fixmatch,
    fixmatch_mix,
    mean_teacher,
    must,
    rpg,
    rpg_plus,
    segpl,
    self_training,
    supervised,
    ua_mt,
    ucmt,
    unimatch,
    urpc,
)
from semiseg.methods.base import (
    Batch,
    Curriculum,
    Method,
    MethodConfig,
    MethodContext,
    NetSpec,
    Progress,
    StepOut,
    WholeCase,
    parse_method_options,
)
from semiseg.methods.registry import available_methods, get_method, register

__all__ = [
    "parse_method_options",
    "Batch",
    "Curriculum",
    "Method",
    "MethodConfig",
    "MethodContext",
    "NetSpec",
    "Progress",
    "StepOut",
    "WholeCase",
    "available_methods",
    "get_method",
    "register",
]
