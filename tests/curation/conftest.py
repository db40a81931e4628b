"""Fixtures of the curation tests: the planted-error world of curation_world.py."""

from __future__ import annotations

import pytest
from curation_world import World, build_world


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """The planted-error world, built once per session."""
    return build_world(tmp_path_factory.mktemp("curation-world"))
