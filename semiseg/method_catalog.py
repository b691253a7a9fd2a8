"""Every method's name, summary and module, found without importing torch.

A built-in method is a class in a module of ``semiseg/methods/`` whose body sets ``name`` and ``summary`` to string
literals: saving such a file is all it takes (the module is read with ``ast``, not imported, so ``semiseg
methods`` and ``--help`` answer in a fraction of a second; importing methods pulls in torch and MONAI, seconds).
A method in another installed package registers through the ``semiseg.methods`` entry point group, one entry
per method, named as the method: ``entropy_min = my_package.methods:EntropyMin`` under
``[project.entry-points."semiseg.methods"]`` of its pyproject.toml. ``semiseg.methods.registry`` imports the
module of a method when a run asks for it.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from semiseg.errors import SemisegError

ENTRY_POINT_GROUP = "semiseg.methods"
METHODS_DIR = Path(__file__).resolve().parent / "methods"
BUILTIN = "semiseg"


@dataclass(frozen=True)
class MethodEntry:
    """Where a method lives: ``module``'s class ``attribute``, and what provides it (semiseg or a distribution)."""

    name: str
    summary: str
    module: str
    attribute: str
    provider: str = BUILTIN

    @property
    def is_plugin(self) -> bool:
        return self.provider != BUILTIN


def _string_constants(body: list[ast.stmt]) -> dict[str, str]:
    """Class-level ``name = "..."`` (annotated or not) assignments whose value is a string literal."""
    found = {}
    for node in body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
            found[target.id] = value.value
    return found


def methods_in_source(path: Path) -> dict[str, tuple[str, str]]:
    """Method name → (class name, summary) for every class in ``path`` that sets a non-empty name and summary."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise SemisegError(f"{path}: cannot read this method module ({exc}); fix or remove the file") from None
    found: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            constants = _string_constants(node.body)
            name, summary = constants.get("name"), constants.get("summary")
            if name and summary:
                if name in found:
                    raise SemisegError(f"{path}: two classes are named {name!r}; give each method its own name")
                found[name] = (node.name, summary)
    return found


def builtin_methods() -> dict[str, MethodEntry]:
    """The methods of ``semiseg/methods/*.py`` (modules whose name starts with ``_`` are helpers)."""
    entries: dict[str, MethodEntry] = {}
    for path in sorted(METHODS_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        for name, (attribute, summary) in methods_in_source(path).items():
            if name in entries:
                raise SemisegError(f"{path}: method {name!r} is also defined in "
                                   f"{METHODS_DIR / (entries[name].module.rsplit('.', 1)[1] + '.py')}; rename one")
            entries[name] = MethodEntry(name, summary, f"semiseg.methods.{path.stem}", attribute)
    return entries


def _plugin_entry(point: EntryPoint) -> MethodEntry:
    provider = point.dist.name if point.dist is not None else "an installed package"
    where = f"entry point {point.name!r} = {point.value!r} of {provider} (group {ENTRY_POINT_GROUP})"
    if not point.attr or "." in point.attr:
        raise SemisegError(f"{where}: point it at a method class, as 'package.module:ClassName'")
    try:
        spec = importlib.util.find_spec(point.module)
    except (ImportError, ValueError) as exc:
        raise SemisegError(f"{where}: cannot find module {point.module!r} ({exc})") from None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise SemisegError(f"{where}: module {point.module!r} is not installed as Python source")
    found = methods_in_source(Path(spec.origin))
    classes = {attribute: (name, summary) for name, (attribute, summary) in found.items()}
    if point.attr not in classes:
        raise SemisegError(f"{where}: {spec.origin} has no class {point.attr} that sets name and summary to strings")
    name, summary = classes[point.attr]
    if name != point.name:
        raise SemisegError(f"{where}: the class is named {name!r}; name the entry point as the method")
    return MethodEntry(name, summary, point.module, point.attr, provider)


def plugin_methods() -> dict[str, MethodEntry]:
    """Methods of installed packages, from their ``semiseg.methods`` entry points (read, not imported)."""
    entries: dict[str, MethodEntry] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        entry = _plugin_entry(point)
        if entry.name in entries and entries[entry.name] != entry:
            raise SemisegError(f"method {entry.name!r} is provided by both {entries[entry.name].provider} and "
                               f"{entry.provider}; uninstall one")
        entries[entry.name] = entry
    return entries


def method_catalog(plugins: bool = True) -> dict[str, MethodEntry]:
    """Every method by name, sorted: the built-in ones and (``plugins``) those of installed packages."""
    entries = builtin_methods()
    for name, entry in (plugin_methods() if plugins else {}).items():
        if name in entries:
            raise SemisegError(f"{entry.provider} registers method {name!r} (entry point group {ENTRY_POINT_GROUP}), "
                               "which is a built-in method's name; rename the plugin's method")
        entries[name] = entry
    return dict(sorted(entries.items()))
