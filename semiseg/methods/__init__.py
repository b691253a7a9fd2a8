"""Methods, one module each: a class with ``name`` and ``summary`` in a module here is a method (see
``semiseg.method_catalog``); the registry imports a module when a run asks for its method."""

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
