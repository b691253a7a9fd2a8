"""The catalog read from the sources (what the CLI lists without torch) equals what importing the modules gives."""

import importlib
import inspect
import pkgutil

import pytest

import semiseg.methods
from semiseg.errors import SemisegError
from semiseg.method_catalog import builtin_methods, methods_in_source
from semiseg.methods import Method, available_methods


def _imported_methods() -> dict[str, tuple[str, str]]:
    """name → (module, summary) of every Method subclass defined in a module of semiseg/methods/, by import."""
    found = {}
    for info in pkgutil.iter_modules(semiseg.methods.__path__):
        module = importlib.import_module(f"semiseg.methods.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Method) and cls.__module__ == module.__name__ and cls.name:
                found[cls.name] = (cls.__module__, cls.summary)
    return found


def test_the_catalog_read_from_source_is_what_the_modules_define():
    catalog = {name: (e.module, e.summary) for name, e in builtin_methods().items()}
    assert catalog == _imported_methods()
    assert {name: (cls.__module__, cls.summary) for name, cls in available_methods(plugins=False).items()} == catalog


def test_a_broken_or_ambiguous_module_is_one_error_naming_the_file(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("class A(:\n")
    with pytest.raises(SemisegError, match="broken.py"):
        methods_in_source(broken)
    twice = tmp_path / "twice.py"
    twice.write_text('class A:\n    name = "x"\n    summary = "s"\n\n\nclass B:\n    name = "x"\n    summary = "t"\n')
    with pytest.raises(SemisegError, match="twice.py: two classes are named 'x'"):
        methods_in_source(twice)
