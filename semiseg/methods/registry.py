"""The method registry: the engine asks it by name and never imports a method itself.

Names come from ``semiseg.method_catalog`` (the sources of ``semiseg/methods/`` and the ``semiseg.methods`` entry
points); a method's module is imported the first time a run asks for it. ``register`` also adds a class defined
elsewhere (a notebook, a test) for this process.
"""

from __future__ import annotations

import difflib
import importlib

from semiseg.errors import ConfigError, SemisegError
from semiseg.method_catalog import MethodEntry, method_catalog
from semiseg.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Make a method available under ``cls.name`` (a class decorator; modules in the catalog need not use it)."""
    if not cls.name or not cls.summary:
        raise ValueError(f"{cls.__name__} needs a name and a one-line summary to be registered")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two methods are registered as {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _load(entry: MethodEntry) -> type[Method]:
    """Import the entry's module and register its class."""
    where = f"method {entry.name!r} ({entry.module}:{entry.attribute}, from {entry.provider})"
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        raise SemisegError(f"{where}: cannot import it ({exc})") from exc
    cls = getattr(module, entry.attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, Method)) or cls.name != entry.name:
        raise SemisegError(f"{where}: {entry.attribute} is not a Method subclass named {entry.name!r}")
    return register(cls)


def get_method(name: str) -> type[Method]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    catalog = method_catalog()
    if name not in catalog:
        known = sorted({*catalog, *_REGISTRY})
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"train.method: unknown method {name!r}.{hint} Run 'semiseg methods' to list them ({', '.join(known)})."
        )
    return _load(catalog[name])


def available_methods(plugins: bool = True) -> dict[str, type[Method]]:
    """Every catalogued method (built-in, and with ``plugins`` those of installed packages), imported, plus any
    registered in this process by hand; ``plugins=False`` gives the built-in ones alone (the generated docs)."""
    catalog = method_catalog(plugins)
    loaded = {name: _REGISTRY.get(name) or _load(entry) for name, entry in catalog.items()}
    if plugins:
        loaded |= _REGISTRY
    return dict(sorted(loaded.items()))
