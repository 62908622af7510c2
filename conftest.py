"""pytest's configuration for the whole repository.

``make test`` runs the tests and the library's docstring examples in one call
(``pytest --doctest-modules tests tfrec pipelines serving``). Under ``tests/`` only test
modules and conftests are collected: the other files there are helpers, some of them
scripts a test runs in a child process, which collecting doctests must not import.
"""

from pathlib import Path

TESTS = Path(__file__).resolve().parent / "tests"


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if collection_path.suffix != ".py" or TESTS not in collection_path.parents:
        return None
    name = collection_path.name
    return not (name.startswith("test_") or name == "conftest.py") or None
