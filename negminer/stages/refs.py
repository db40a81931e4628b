"""The typed references stages hand each other: paths, fingerprints and counts, never data.

Every stage returns one of these frozen models and takes its producers' models as arguments;
a stage's completion marker in the work folder (``read.json``, ``embed.json``, ...) is the
JSON of its reference, so a resumed run reads back exactly what the first run returned.

Fields a later stage reads are named and typed. What only goes into the manifest as it is
(counters by reason, cleanlab's noise estimate, score quantiles) is a :data:`JsonObject`:
its keys are documented where the manifest is (README, docs/curation.md), not read by code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, JsonValue

JsonObject = dict[str, JsonValue]

RefT = TypeVar("RefT", bound="Ref")


class Ref(BaseModel):
    """Base of every reference: frozen, unknown keys refused, JSON round trip exact."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> dict[str, Any]:
        """The reference as plain JSON types (what its completion marker holds)."""
        return self.model_dump(mode="json")


class InputFingerprint(Ref):
    """An input file (or folder of Parquet files): path, content hash and size."""

    path: str
    sha256: str
    bytes: int


class Inputs(Ref):
    pairs: InputFingerprint
    corpus: InputFingerprint | None


class ReadRef(Ref):
    """The read stage's output: ``anchors``/``docs``/``pairs``/``rejects.parquet`` in `work_dir`."""

    work_dir: str
    inputs: Inputs
    counts: dict[str, int]  # rows in and out, rejects by reason (manifest ``counts``)
    seconds: float

    @property
    def anchors(self) -> int:
        return self.counts["anchors"]

    @property
    def docs(self) -> int:
        return self.counts["docs"]


class EmbedCounts(Ref):
    rows: int
    embedded: int
    reused: int
    truncated: int | None = None  # set once vectors are assembled


class EmbedShard(Ref):
    """One row group of ``embed-plan.parquet``: texts the store lacks, embedded as one unit."""

    plan: str
    shard: int
    rows: int


class EmbedPlanRef(Ref):
    shards: tuple[EmbedShard, ...]
    counts: dict[str, EmbedCounts]  # "anchors", "docs"
    texts: int


class EmbedShardResult(Ref):
    shard: int
    rows: int
    embedded: int
    seconds: float


class PromptsRef(Ref):
    """The literal prompts put before the anchors (queries) and the documents ("" for none)."""

    query: str
    document: str


class ModelRef(Ref):
    """The embedding model as the manifest names it (``precomputed`` for the user's vectors)."""

    name: str
    path: str | None
    fingerprint: str
    prompts: PromptsRef | None = None  # None: precomputed vectors (or a marker written before prompts)
    backend: str | None = None  # what ran the forward pass (embed.backend resolved); None: precomputed
    precision: str | None = None  # its arithmetic (embed.precision resolved); None: precomputed


class StoreRef(Ref):
    """The embedding store folder the vectors came from, and its shards holding them."""

    root: str
    folder: str
    shards: tuple[str, ...]


class EmbedRef(Ref):
    """``anchors.npy`` / ``docs.npy`` in the work folder, and where their vectors came from."""

    model: ModelRef
    dim: int
    embedding: dict[str, EmbedCounts]
    store: StoreRef | None

    def manifest_counts(self) -> dict[str, Any]:
        return {stem: counts.to_json() for stem, counts in self.embedding.items()}


class DocRange(Ref):
    """A consecutive range ``[first, stop)`` of docs (an index shard) or anchors (a search shard)."""

    shard: int
    first: int
    stop: int


class IndexShardEntry(Ref):
    """An index shard as the index reference lists it (``path`` is dropped from the manifest)."""

    path: str | None = None
    first: int
    stop: int
    params: dict[str, int]
    recall: float | None
    reused_from: str | None


class IndexShardRef(IndexShardEntry):
    """One doc range's saved index (built, or taken over from the parent run), with how it was tuned."""

    factory: str
    recall_sample: int
    k: int
    gpu: bool
    seconds: float

    def entry(self) -> IndexShardEntry:
        return IndexShardEntry(**self.model_dump(include=set(IndexShardEntry.model_fields)))


class ExtendedFrom(Ref):
    """The parent run whose index (or index shards) this run's index started from."""

    work: str
    rows: int
    shards: int | None = None


class IndexRef(Ref):
    """The search index: one file (`path`) or one file per doc range (`shards`).

    `factory`, `params`, `recall`, `recall_sample`, `k` and `gpu` are
    :class:`negminer.mining.index.IndexReport`'s figures (the shards' own for a sharded index).
    """

    key: str
    path: str | None
    rows: int
    factory: str
    params: dict[str, int]
    recall: float | None
    recall_sample: int
    k: int
    gpu: bool
    shards: tuple[IndexShardEntry, ...] | None = None
    extended_from: ExtendedFrom | None
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The reference without paths or timing: what the manifest records as ``index``."""
        summary = self.model_dump(mode="json", exclude={"path", "seconds"}, exclude_none=False)
        if self.shards is None:
            del summary["shards"]
        else:
            summary["shards"] = [shard.model_dump(mode="json", exclude={"path"}) for shard in self.shards]
        if self.extended_from is not None and self.extended_from.shards is None:
            del summary["extended_from"]["shards"]
        return summary


class Bm25ShardRef(Ref):
    """One doc range's saved bm25s index (``path``, a folder), with its postings count."""

    path: str
    first: int
    stop: int
    postings: int
    seconds: float


class Bm25PlanRef(Ref):
    """The BM25 index's plan: the pool's global statistics file and the doc ranges to index."""

    key: str
    stats: str
    doc_keys: str  # doc-keys.npy: a hash of each doc id, the tie-breaker of the fused lists
    rows: int
    shards: tuple[DocRange, ...]
    seconds: float


class Bm25Ref(Ref):
    """The BM25 index: one bm25s index per doc range, scored with the pool's global statistics."""

    key: str
    rows: int
    doc_keys: str
    shards: tuple[Bm25ShardRef, ...]
    scoring: JsonObject
    seconds: float

    def summary(self) -> dict[str, Any]:
        """What the manifest records: the scoring, the doc ranges and their postings (no paths)."""
        return {
            "key": self.key,
            "rows": self.rows,
            "scoring": self.scoring,
            "shards": [shard.model_dump(mode="json", include={"first", "stop", "postings"}) for shard in self.shards],
        }


class SearchPartRef(Ref):
    """One search shard's part of the candidate table; `merged` when the merge came first."""

    shard: int
    first: int | None = None
    stop: int | None = None
    path: str | None = None
    rows: int | None
    depth: int | None = None
    seconds: float = 0.0
    merged: bool = False
    source_counts: dict[str, int] | None = None  # rows by source (hybrid searches)


class SecondDenseRef(Ref):
    """The dense2 source: a second model's ``anchors.npy`` / ``docs.npy`` and their index, in `work_dir`."""

    work_dir: str
    model: ModelRef
    index: IndexRef
    store: StoreRef | None = None  # where its vectors are stored (the manifest names its shards, for gc)

    def summary(self) -> dict[str, Any]:
        """What the manifest records of it: the model and its index (no paths)."""
        return {"model": self.model.model_dump(mode="json", exclude={"path"}), "index": self.index.summary()}


class SearchRef(Ref):
    """The candidate table: `search_depth` candidates per anchor plus its positives."""

    candidates: str
    rows: int
    depth: int
    index: JsonObject  # IndexRef.summary() of the index searched
    seconds: float
    sources: JsonObject | None = None  # hybrid searches: sources, fusion, rows by source, the BM25 index


class CuratePlanRef(Ref):
    """Curation's plan: the judges fitted on a sample (`fit`) and the shards of candidate rows.

    No `fit` and no shards: every anchor is curated in one pass by the merge.
    """

    candidates: str
    enabled: bool = True
    fit: str | None = None
    shards: tuple[DocRange, ...] = ()
    noise: JsonObject | None = None
    skipped: bool = False
    seconds: float = 0.0


class CuratePartRef(Ref):
    """One shard's curated candidates and flagged rows, the pairs it excludes, its counts."""

    curated: str
    flagged: str
    excluded_pairs: tuple[int, ...]
    counts: dict[str, int]


class CurateRef(Ref):
    """Curated candidates and training pairs (the inputs unchanged when curation is off)."""

    candidates: str
    pairs: str
    flagged: str | None = None
    counts: JsonObject = {}  # flagged_by_kind, curation (manifest ``counts``)
    noise: JsonObject | None = None  # cleanlab's estimated label noise
    seconds: float = 0.0


class SelectShard(DocRange):
    """A selection shard: anchors ``[first, stop)`` and their candidate rows ``[row_first, row_stop)``."""

    row_first: int
    row_stop: int


class SelectPlanRef(Ref):
    """Selection's plan: the inputs every shard reads, the percentile bounds, the shards.

    `key` digests the candidates, pairs, decisions and settings: a shard's part is reused
    (after a kill) only by a run with the same key.
    """

    candidates: str
    pairs: str  # training pairs with their cosine (pairs-scored.parquet, published)
    held_out: str  # pairs curation held out of training, with their cosine
    decisions: str  # the reviewers' decisions as the plan read them
    key: str
    min_score_from_percentile: float | None
    max_score_from_percentile: float | None
    batched: bool  # False: the candidates' anchors are not together, read in one batch
    shards: tuple[SelectShard, ...]
    difficulty_medium: float | None  # margins from which a candidate is medium / hard (None: no candidates)
    difficulty_hard: float | None
    seconds: float = 0.0


class SelectPartRef(Ref):
    """One selection shard's parts (table stem -> path) and counters (in first-seen order)."""

    shard: int
    first: int
    stop: int
    parts: dict[str, str]
    rows: dict[str, int]
    negatives: int
    anchors_short: int
    reasons: tuple[tuple[str, int], ...]
    audit: tuple[tuple[str, int], ...]
    by_difficulty: tuple[tuple[str, int], ...] = ()  # chosen negatives per tier
    seconds: float = 0.0


class SelectRef(Ref):
    """The selected candidates and training views, with the manifest's figures."""

    selected: str
    triplets: str
    tables: dict[str, str]  # table stem -> path of every file the version publishes from selection
    counts: JsonObject
    selection: JsonObject
    score_quantiles: JsonObject
    seconds: float


class AuditLoadRef(Ref):
    loaded: int
    version: str | None = None


def load_ref(path: Path, kind: type[RefT]) -> RefT | None:
    """The reference a finished stage left at `path`, or None when the stage has not finished."""
    return kind.model_validate_json(path.read_bytes()) if path.exists() else None
