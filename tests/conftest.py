"""Test-wide settings."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_case_cache(tmp_path_factory):
    """Runs cache prepared cases (and the demo) in a throwaway folder, never in the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SEMISEG_CACHE", str(tmp_path_factory.mktemp("case-cache")))
    yield
    patch.undo()
