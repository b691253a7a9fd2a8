"""Methods, one module each. Importing this package registers the built-in ones."""

from semiseg.methods import supervised  # noqa: F401
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
