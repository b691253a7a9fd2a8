"""The method registry: the engine asks it by name and never imports a method itself."""

from __future__ import annotations

import difflib

from semiseg.errors import ConfigError
from semiseg.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under ``cls.name``."""
    if not cls.name or not cls.summary:
        raise ValueError(f"{cls.__name__} needs a name and a one-line summary to be registered")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two methods are registered as {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    _load_builtin()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"train.method: unknown method {name!r}.{hint} Run 'semiseg methods' to list them "
            f"({', '.join(sorted(_REGISTRY))})."
        )
    return _REGISTRY[name]


def available_methods() -> dict[str, type[Method]]:
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def _load_builtin() -> None:
    import semiseg.methods  # noqa: F401  (imports every built-in method module)
