"""Every third-party package the code imports is declared in pyproject.toml (as a dependency or an extra), so
an install from scratch never depends on another package happening to pull it in (SimpleITK came only with medpy)."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Calls that import a module named by a string: __import__("onnx"), importlib.import_module, find_spec,
# importlib.resources.files("nilearn"), and export's _require("onnxruntime").
DYNAMIC = {"__import__", "import_module", "find_spec", "files", "_require"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in DYNAMIC:
                names.add(node.args[0].value)
    return {name.split(".")[0] for name in names}


def third_party_imports(package: Path) -> dict[str, set[str]]:
    """Top-level module → files of ``package`` importing it, stdlib and the package itself left out."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for module in _imported_modules(ast.parse(path.read_text())):
            if module not in sys.stdlib_module_names and module != package.name and module.isidentifier():
                found.setdefault(module, set()).add(path.relative_to(package.parent).as_posix())
    return found


def declared_distributions(pyproject: Path) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    requirements += [r for extra in project.get("optional-dependencies", {}).values() for r in extra]
    return {_normalise(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in requirements}


def test_imports_are_parsed_including_lazy_and_dynamic_ones(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("import os\nimport numpy as np\nfrom pkg import b\n\ndef f():\n"
                                  "    import SimpleITK\n"
                                  "    return __import__('onnx'), importlib.import_module('ray.util')\n")
    assert set(third_party_imports(package)) == {"numpy", "SimpleITK", "onnx", "ray"}


def test_every_third_party_import_is_declared():
    distributions = importlib.metadata.packages_distributions()
    declared = declared_distributions(REPO / "pyproject.toml")
    missing = {}
    for module, files in third_party_imports(REPO / "semiseg").items():
        names = {_normalise(d) for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
