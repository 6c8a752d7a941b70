"""The import-linter contracts in pyproject.toml cover every module of ucloud.

A core module left out of "The core imports no daemon and not the CLI" could import a daemon's
internals unseen; the list is written by hand, so a new module is checked for here."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import pytest

import ucloud

pytestmark = pytest.mark.unit

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def contract(name: str) -> dict[str, list[str]]:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"] == name)


def test_every_module_of_ucloud_is_core_or_forbidden_to_the_core():
    core = contract("The core imports no daemon and not the CLI")
    named = set(core["source_modules"]) | set(core["forbidden_modules"])
    modules = {f"ucloud.{m.name}" for m in pkgutil.iter_modules(ucloud.__path__)}
    assert modules - named == set(), "add these to the contract's source_modules"
    assert named - modules == set(), "these are no longer modules of ucloud"
