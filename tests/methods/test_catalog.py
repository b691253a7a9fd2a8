"""The static method table (read by the CLI without torch) equals what the registry holds."""

from semiseg.method_catalog import BUILTIN_METHODS
from semiseg.methods import available_methods


def _table_from_registry() -> dict[str, tuple[str, str]]:
    return {name: (cls.__module__, cls.summary) for name, cls in available_methods().items()}


def test_catalog_matches_the_registered_classes():
    expected = _table_from_registry()
    rows = "\n".join(f"    {n!r}: ({m!r},\n        {s!r})," for n, (m, s) in expected.items())
    assert expected == BUILTIN_METHODS, f"update BUILTIN_METHODS in semiseg/method_catalog.py to:\n{rows}"
