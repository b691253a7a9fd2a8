"""docs/adding-a-method.md lists every member of the method contract, and nothing the classes lack."""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from semiseg.methods import base

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding-a-method.md"
CLASSES = [base.Method, base.StepOut, base.NetSpec, base.Progress, base.Batch, base.MethodContext, base.Curriculum,
           base.WholeCase]


def _code_members(cls: type) -> set[str]:
    """Public attributes, methods, properties, dataclass fields and ClassVars, plus what ``__init__`` sets."""
    names = {n for n in vars(cls) if not n.startswith("_")} | set(getattr(cls, "__annotations__", {}))
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    if "__init__" in vars(cls) and not dataclasses.is_dataclass(cls):
        names |= set(re.findall(r"self\.(\w+) =", inspect.getsource(cls.__init__)))
    return {n for n in names if not n.startswith("_")}


def _documented() -> dict[str, set[str]]:
    """Class name → members named in the first column of the page's contract tables.

    A row lists ``Class.member`` (or a bare member, which then belongs to the class the row's section is
    about, or to the class named last in the same cell).
    """
    found: dict[str, set[str]] = {cls.__name__: set() for cls in CLASSES}
    section = ""
    for line in DOC.read_text().splitlines():
        heading = re.match(r"### `(\w+)`", line)
        if heading:
            section = heading.group(1)
        if not (line.startswith("| `") and section):
            continue
        owner = section
        for token in re.findall(r"`([^`]+)`", line.split("|")[1]):
            qualified = re.match(r"(\w+)\.(\w+)", token)
            if qualified and qualified.group(1) in found:
                owner, member = qualified.groups()
            else:
                member = re.match(r"\w+", token).group(0)
            found[owner].add(member)
    return found


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_contract_table_and_the_class_agree(cls):
    documented = _documented()[cls.__name__]
    code = _code_members(cls)
    assert not code - documented, f"{cls.__name__}: add to docs/adding-a-method.md: {sorted(code - documented)}"
    assert not documented - code, f"{cls.__name__}: documented but not in the class: {sorted(documented - code)}"
