"""Every default lives in negminer/config.py: no public function of the package copies one.

A library function takes a config section, or takes the setting as a keyword argument without
a default (DESIGN.md). A parameter named like a field of a config section that has a default is
a copy that can drift from the config's default, so it fails here, named
``module.function(param=default)``, unless :data:`ALLOWED` says why that name means something
else there. Parameters that take a whole config object (``config: PipelineConfig =
PipelineConfig()`` of the Prefect flow) are not named like a field, so they pass.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from fnmatch import fnmatchcase
from types import ModuleType
from typing import Any

import pytest

import negminer
from negminer.config import CurateConfig, EmbedConfig, IndexConfig, InputConfig, MineConfig

SECTIONS = (InputConfig, EmbedConfig, MineConfig, IndexConfig, CurateConfig)
CONFIG_FIELDS = frozenset(name for section in SECTIONS for name in section.model_fields)

# Modules the walk does not import, with the reason.
SKIPPED_MODULES: dict[str, str] = {
    "negminer.config": "the single home of the defaults",
    "negminer.__main__": "importing it runs the command line",
    "negminer.audit.migrations.*": "alembic migration scripts: they run inside alembic's context only",
}

# (module, function, parameter) patterns (fnmatch) that may keep a default, with the reason.
ALLOWED: dict[tuple[str, str, str], str] = {
    ("negminer.storage.embedding_store", "EmbeddingStore.__init__", "max_seq_length"): "the truncation length "
    "the store's vectors were made with, recorded in its meta.json; None means 'not known' (a store made by "
    "hand), not EmbedConfig's 'the model's own limit'",
    ("negminer.cli", "*", "*"): "typer options: None means 'not given on the command line', so the "
    "YAML file's value or the config default applies",
    ("negminer.evaluation.cli", "*", "*"): "typer options of `negminer evaluate`: None means 'not given on the "
    "command line', so EvaluateConfig's default applies",
    ("negminer.api", "mine", "model"): "like the CLI's --model: None means 'not given', so the config's "
    "embed.model (or the packaged model) stands",
    ("negminer.audit.cli", "*", "kind"): "audit filter (the kind of flagged pair listed), not IndexConfig.kind; "
    "None lists every kind",
    ("negminer.audit.cli", "*", "min_score"): "audit filter on the stored score; None: no lower bound",
    ("negminer.audit.cli", "*", "max_score"): "audit filter on the stored score; None: no upper bound",
    ("negminer.audit.cli", "export", "output_format"): "the export file's format (jsonl, csv, label-studio), "
    "not MineConfig.output_format; None: from the file suffix",
    ("negminer.audit.queries", "Filters.__init__", "kind"): "the audit filter behind audit cli/web; None: every kind",
    (
        "negminer.audit.queries",
        "Filters.__init__",
        "min_score",
    ): "the audit filter behind audit cli/web; None: no bound",
    (
        "negminer.audit.queries",
        "Filters.__init__",
        "max_score",
    ): "the audit filter behind audit cli/web; None: no bound",
}


def _skipped(module_name: str) -> bool:
    return any(fnmatchcase(module_name, pattern) for pattern in SKIPPED_MODULES)


def package_modules() -> Iterator[ModuleType]:
    """Every module of the negminer package, imported (less :data:`SKIPPED_MODULES`)."""
    for info in pkgutil.walk_packages(negminer.__path__, "negminer."):
        if not _skipped(info.name):
            yield importlib.import_module(info.name)


def public_functions(module: ModuleType) -> Iterator[tuple[str, Callable[..., Any]]]:
    """(qualified name, function) of the module's public functions and its classes' public methods.

    Only what the module defines itself (not what it imports); ``__init__`` counts as public.
    Prefect tasks and flows are functions wrapped by ``functools.update_wrapper``: their
    signature is the wrapped function's.
    """
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            for method_name, method in vars(obj).items():
                if method_name.startswith("_") and method_name != "__init__":
                    continue
                if isinstance(method, staticmethod | classmethod):
                    method = method.__func__
                if inspect.isfunction(method):
                    yield f"{name}.{method_name}", method
        elif callable(obj):
            yield name, obj


def default_copies(functions: Iterable[tuple[str, str, Callable[..., Any]]]) -> list[str]:
    """``module.function(param=default)`` for each defaulted parameter named like a config field."""
    found = []
    for module_name, qualname, function in functions:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):  # a builtin or extension callable without a signature
            continue
        for parameter in parameters:
            if parameter.name in CONFIG_FIELDS and parameter.default is not inspect.Parameter.empty:
                found.append((module_name, qualname, parameter.name, parameter.default))
    return [f"{m}.{q}({p}={d!r})" for m, q, p, d in found if not _allowed(m, q, p)]


def _allowed(module_name: str, qualname: str, parameter: str) -> bool:
    return any(
        fnmatchcase(module_name, m) and fnmatchcase(qualname, q) and fnmatchcase(parameter, p) for m, q, p in ALLOWED
    )


def _package_functions() -> list[tuple[str, str, Callable[..., Any]]]:
    return [(module.__name__, name, fn) for module in package_modules() for name, fn in public_functions(module)]


def test_no_function_copies_a_config_default() -> None:
    copies = default_copies(_package_functions())
    if copies:
        pytest.fail(
            "defaults live in negminer/config.py only; remove these (or allow them with a reason):\n"
            + "\n".join(copies),
            pytrace=False,
        )


def test_every_allowance_is_still_needed() -> None:
    functions = _package_functions()
    used = {
        key
        for key in ALLOWED
        for module_name, qualname, function in functions
        if fnmatchcase(module_name, key[0])
        and fnmatchcase(qualname, key[1])
        and any(
            fnmatchcase(p.name, key[2]) and p.name in CONFIG_FIELDS and p.default is not inspect.Parameter.empty
            for p in inspect.signature(function).parameters.values()
        )
    }
    assert not set(ALLOWED) - used, f"allow-list entries that match nothing: {sorted(set(ALLOWED) - used)}"


# A planted violation: the scanner must report it, so the test above cannot pass vacuously.
def encode_planted(texts: list[str], *, batch_size: int = 32, normalize: bool = True) -> None:
    """Copies EmbedConfig.batch_size's default (``normalize`` is no config field)."""


class PlantedEmbedder:
    def __init__(self, *, precision: str = "float32") -> None:
        self.precision = precision

    def run(self, texts: list[str], *, seed: int = 12) -> None:
        """Copies MineConfig.seed / CurateConfig.seed's default."""

    def _private(self, *, batch_size: int = 32) -> None:
        """Private: not checked."""


def test_the_scanner_finds_a_planted_copy() -> None:
    planted = [(__name__, name, fn) for name, fn in public_functions(importlib.import_module(__name__))]
    assert set(default_copies(planted)) == {
        f"{__name__}.encode_planted(batch_size=32)",
        f"{__name__}.PlantedEmbedder.__init__(precision='float32')",
        f"{__name__}.PlantedEmbedder.run(seed=12)",
    }


def test_the_walk_reaches_the_package() -> None:
    names = {module.__name__ for module in package_modules()}
    assert {"negminer.mining.embedding", "negminer.storage.readers", "negminer.flows.mine"} <= names
    assert "negminer.config" not in names
