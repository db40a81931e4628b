"""negminer from Python: :func:`mine`, :func:`refilter` and :func:`open_version`, one call per job.

:func:`mine` runs the same stages as ``negminer mine`` in this process, in turn, without
Prefect (:func:`negminer.stages.run_stages`): no server is started, and the dataset bytes equal
the command's for the same inputs and settings. It takes paths, a pyarrow Table, a pandas
DataFrame or a ``datasets.Dataset``, and sentence-transformers' ``mine_hard_negatives`` option
names (``num_negatives``, ``range_min``, ``range_max``, ``max_score``, ``relative_margin``,
``sampling_strategy``, ``query_prompt``, ``corpus_prompt``, ...), so a call translates one to one.
:func:`refilter` derives a new version from a stored one's candidates, as ``negminer refilter``
does, with the same settings and the same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from negminer.config import MineConfig, PipelineConfig
from negminer.errors import ConfigError

InputLike = str | Path | pa.Table | Any  # a path, a pyarrow Table, a pandas DataFrame or a datasets.Dataset

# mine_hard_negatives' prompt options and the embed settings they set.
EMBED_OPTIONS = {
    "query_prompt": "query_prompt",
    "query_prompt_name": "query_prompt_name",
    "corpus_prompt": "document_prompt",
    "corpus_prompt_name": "document_prompt_name",
}


@dataclass(frozen=True)
class DatasetVersion:
    """A complete dataset version ``ROOT/NAME/vNNNN`` (see the README's "What a dataset version holds")."""

    path: Path

    @property
    def manifest(self) -> dict[str, Any]:
        from negminer.storage.versions import read_manifest

        return read_manifest(self.path)

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["counts"]

    @property
    def flagged(self) -> pa.Table:
        """The pairs curation flagged (an empty table when curation was off)."""
        import pyarrow.parquet as pq

        path = self.path / "flagged.parquet"
        return pq.read_table(path) if path.exists() else pa.table({})

    def load(self, table: str = "triplets"):
        """The version's `table` (default the training view) as a ``datasets.Dataset``.

        Example:
            >>> train = negminer.open_version("datasets/scifact-sample/v0001").load()  # doctest: +SKIP
            >>> SentenceTransformerTrainer(model=model, train_dataset=train, loss=loss)  # doctest: +SKIP
        """
        try:
            from datasets import Dataset
        except ImportError as err:
            raise ConfigError("load() needs the datasets package: pip install datasets") from err
        return Dataset.from_parquet(str(self.path / f"{table}.parquet"))


def open_version(path: str | Path) -> DatasetVersion:
    """The complete dataset version at `path` (a version folder, or a dataset folder: its LATEST)."""
    from negminer.storage.versions import latest_version

    path = Path(path)
    if not (path / "manifest.json").exists() and (latest := latest_version(path)) is not None:
        path = path / latest
    if not (path / "manifest.json").exists():
        raise ConfigError(f"{path}: not a complete dataset version (no manifest.json)")
    return DatasetVersion(path)


def mine(
    pairs: InputLike,
    corpus: InputLike | None = None,
    *,
    out: str | Path = "datasets",
    name: str | None = None,
    model: str | None = None,
    config: PipelineConfig | str | Path | None = None,
    store: str | Path | None = None,
    **options: Any,
) -> DatasetVersion:
    """Mine hard negatives for `pairs` (against `corpus`) into a new version of `out`/`name`.

    Args:
        pairs: anchor/positive pairs: a Parquet, JSONL or CSV path (or a folder of Parquet
            files), a pyarrow Table, a pandas DataFrame or a ``datasets.Dataset`` with columns
            ``anchor`` and ``positive`` (optional ``anchor_id``, ``positive_id``).
        corpus: documents (``text``, optional ``id``, ``title``), the same kinds of input.
        out: the datasets root.
        name: the dataset name (default: the pairs file's stem, or ``dataset``).
        model: a local sentence-transformers folder (default: the packaged all-MiniLM-L6-v2).
        config: a :class:`PipelineConfig` or a YAML file; `options` go on top.
        store: the embedding store (default ``OUT/.embeddings``).
        **options: ``mine`` settings by sentence-transformers' names (``num_negatives=5``,
            ``relative_margin=0.05``, ``strategy="naive"``, ...), and its prompt options:
            ``query_prompt`` / ``query_prompt_name`` for the anchors, ``corpus_prompt`` /
            ``corpus_prompt_name`` for the positives and corpus (``embed.document_prompt`` /
            ``embed.document_prompt_name``).

    Example:
        >>> version = negminer.mine("pairs.parquet", corpus="corpus.parquet", out="datasets",
        ...                         num_negatives=5)  # doctest: +SKIP
        >>> version.load()  # doctest: +SKIP
    """
    from negminer.stages import run_stages

    unknown = sorted(set(options) - set(MineConfig.model_fields) - set(EMBED_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; mine() takes the mine settings: {_names()}")
    base = _base_config(config)
    overrides = {
        f"embed.{EMBED_OPTIONS[key]}" if key in EMBED_OPTIONS else f"mine.{key}": value
        for key, value in options.items()
    }
    if model is not None:
        overrides["embed.model"] = model
    settings = PipelineConfig.from_dict(base.model_dump(exclude_defaults=True), source="mine()", **overrides)
    inputs = Path(out) / ".inputs"
    pairs_path = _as_path(pairs, inputs, "pairs")
    corpus_path = None if corpus is None else _as_path(corpus, inputs, "corpus")
    name = name or (Path(pairs).stem if isinstance(pairs, str | Path) else "dataset")
    return DatasetVersion(Path(run_stages(pairs_path, out, name, corpus=corpus_path, config=settings, store=store)))


def refilter(
    version: str | Path | DatasetVersion,
    *,
    config: str | Path | None = None,
    out: str | Path | None = None,
    name: str | None = None,
    **options: Any,
) -> DatasetVersion:
    """A new version selected again from `version`'s stored candidates: no embedding, no search.

    The same as ``negminer refilter VERSION [--config FILE] [--strategy S] [--num-negatives N]``:
    the ``mine`` settings not given take their defaults (or the chosen preset's), not the
    parent's; the retrieval settings are the parent's; a YAML file's ``curate`` ``*_action``
    policies are applied to the parent's flags. Settings that need a new embedding, search or
    curation are refused by name (run :func:`mine` for those).

    Args:
        version: a complete dataset version (a path, or a :class:`DatasetVersion`), or a
            dataset folder (its LATEST).
        config: a YAML file laid out like ``negminer mine --config`` (its ``mine`` section and
            ``curate`` policies); `options` go on top.
        out: datasets root of the new version (default: the parent's).
        name: dataset name of the new version (default: the parent's).
        **options: ``mine`` settings by sentence-transformers' names (``num_negatives=5``,
            ``strategy="semi-hard"``, ``relative_margin=0.05``, ...).

    Returns:
        The new :class:`DatasetVersion`; its manifest names `version` as its parent.

    Example:
        >>> v2 = negminer.refilter("datasets/scifact-sample/v0001", strategy="naive")  # doctest: +SKIP
        >>> v2.manifest["derived_from"]["by"]  # doctest: +SKIP
        'refilter'
    """
    from negminer.refilter import refilter as refilter_version
    from negminer.refilter import refilter_config, refilter_policies
    from negminer.storage.versions import check_dataset_name

    unknown = sorted(set(options) - set(MineConfig.model_fields))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; refilter() takes the mine settings: "
            f"{', '.join(sorted(MineConfig.model_fields))}"
        )
    parent = open_version(version.path if isinstance(version, DatasetVersion) else version).path
    if name is not None:
        check_dataset_name(name)
    settings = refilter_config(parent, config, **options)
    policies = refilter_policies(parent, config)
    result = refilter_version(parent, mine=settings, curation=policies, root=out, name=name)
    return DatasetVersion(Path(result.path))


def _base_config(config: PipelineConfig | str | Path | None) -> PipelineConfig:
    if config is None:
        return PipelineConfig()
    return config if isinstance(config, PipelineConfig) else PipelineConfig.from_yaml(config)


def _names() -> str:
    return ", ".join(sorted([*MineConfig.model_fields, *EMBED_OPTIONS]))


def _as_path(data: InputLike, folder: Path, stem: str) -> Path:
    """A path as it is; a table written once to ``folder`` under its content hash (so reruns reuse it)."""
    if isinstance(data, str | Path):
        return Path(data)
    table = _as_table(data)
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    content = sink.getvalue()
    path = folder / f"{stem}-{hashlib.sha256(content.to_pybytes()).hexdigest()[:16]}.parquet"
    if not path.exists():
        from negminer.storage.atomic import write_bytes_atomic

        write_bytes_atomic(path, content.to_pybytes())
    return path


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "data") and isinstance(getattr(data.data, "table", None), pa.Table):  # datasets.Dataset
        return data.data.table
    if type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise ConfigError(f"pairs and corpus are paths, pyarrow Tables, pandas DataFrames or datasets; got {type(data)}")
