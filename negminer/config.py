"""Frozen configuration models: the single home of negminer's defaults.

Every stage boundary takes one of these models; below them functions take plain keyword
arguments. A YAML file maps one to one onto :class:`PipelineConfig`::

    input:
      anchor_column: query
    mine:
      num_negatives: 5
      range_max: 50
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from negminer.errors import ConfigError

OnBadRows = Literal["fail", "quarantine"]
CurationAction = Literal["drop", "quarantine", "keep", "relabel"]
FalseNegativeAction = Literal["auto", "drop", "quarantine", "keep", "relabel"]
CurationClassifier = Literal["hist_gradient_boosting", "logistic_regression"]
CurationIssueRule = Literal["confident_joint", "find_label_issues"]
SamplingStrategy = Literal["top", "random", "simans"]
OutputFormat = Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"]
StrategyName = Literal["auto", "naive", "positive-aware", "semi-hard", "calibrated", "simans"]
CandidateSource = Literal["dense", "bm25", "dense2"]
TrainingPrecision = Literal["float32", "bfloat16"]
Fusion = Literal["rrf", "score"]

# Every selection setting a preset fixes; options not named here (num_negatives, seed,
# output_format, search_depth, ...) keep their own defaults. See docs/strategies.md.
_SELECTION_OFF: dict[str, Any] = {
    "range_min": 0,
    "range_max": None,
    "min_score": None,
    "max_score": None,
    "min_score_percentile": None,
    "max_score_percentile": None,
    "absolute_margin": None,
    "relative_margin": None,
    "semi_hard_margin": None,
    "sampling_strategy": "top",
}
STRATEGY_PRESETS: dict[str, dict[str, Any]] = {
    # sentence-transformers' mine_hard_negatives defaults: the top-k non-positives.
    "naive": {**_SELECTION_OFF},
    # NV-Retriever TopK-PercPos (95%): negatives at most 95% of the positive's score.
    "positive-aware": {**_SELECTION_OFF, "relative_margin": 0.05},
    # FaceNet semi-hard (alpha 0.2 on squared distances = 0.1 cosine), sampled at random.
    "semi-hard": {**_SELECTION_OFF, "semi_hard_margin": 0.1, "sampling_strategy": "random"},
    # Below the 75th percentile of this run's positive scores: portable across score scales.
    "calibrated": {**_SELECTION_OFF, "max_score_percentile": 75.0},
    # SimANS: weight exp(-a·(score − positive − b)²), peaked 0.1 below the positive. The
    # defaults of MineConfig (docs/strategies.md: lowest FN rate at full coverage).
    "simans": {**_SELECTION_OFF, "sampling_strategy": "simans", "simans_a": 50.0, "simans_b": -0.1},
}


# Seeds are mixed as unsigned 64-bit integers (negminer.mining.strategies.pair_priority).
_SEED_MAX = 2**64 - 1
_CLASSIFIER_SEED_MAX = 2**32 - 1  # scikit-learn's random_state range


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputConfig(_Frozen):
    """How to read the pairs and corpus files."""

    anchor_column: str = Field("anchor", description="Pairs column holding the anchor (query) text.")
    positive_column: str = Field("positive", description="Pairs column holding the positive text.")
    anchor_id_column: str = Field(
        "anchor_id", description="Optional pairs column with anchor ids; absent: a hash of the normalised text."
    )
    positive_id_column: str = Field(
        "positive_id", description="Optional pairs column with positive ids, matched against the corpus ids."
    )
    text_column: str = Field("text", description="Corpus column holding the document text.")
    id_column: str = Field(
        "id", description="Optional corpus column with document ids; absent: a hash of the normalised text."
    )
    title_column: str = Field("title", description="Optional corpus column with a title, kept with the document.")
    on_bad_rows: OnBadRows = Field(
        "quarantine",
        description="Row-level problems (null, empty, conflicting ids) go to rejects.parquet "
        "with a reason, or stop the run with an error naming file, row and column.",
    )


class EmbedConfig(_Frozen):
    """Which model embeds the texts, and how."""

    model: str | None = Field(
        None, description="Local sentence-transformers folder; None means packaged all-MiniLM-L6-v2."
    )
    batch_size: int = Field(32, ge=1, description="Texts per forward pass of the model.")
    max_seq_length: int | None = Field(
        None, ge=1, description="Tokens the model reads per text (longer ones are truncated); None: the model's own."
    )
    device: str | None = Field(None, description="torch device; None picks CUDA when present.")
    chunk_size: int = Field(4096, ge=1, description="Texts embedded per stored shard (the unit of resume).")
    processes: int = Field(
        1, ge=1, description="CPU processes encoding at once (sentence-transformers' multi-process pool)."
    )
    anchor_vectors: str | None = Field(
        None, description="Precomputed anchor vectors (Parquet id+embedding, or .npz ids+vectors) instead of a model."
    )
    doc_vectors: str | None = Field(None, description="Precomputed doc vectors (same formats); needs anchor_vectors.")
    store_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="Precision of the vectors kept in the embedding store; float16 halves its size "
        "and is read back as float32.",
    )

    backend: Literal["auto", "torch", "openvino", "onnx"] = Field(
        "auto",
        description="What runs the model's forward pass. auto: the fastest backend installed here whose "
        "vectors pass the float32 check (auto_min_cosine), OpenVINO first (docs/embedding.md). "
        "openvino converts the PyTorch model locally and caches it under cache_dir. onnx is not implemented "
        "(measured no faster than PyTorch here).",
    )
    precision: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        "auto",
        description="Arithmetic of the model's forward pass. auto: bfloat16 where the CPU has AVX512-BF16/AMX "
        "(or a GPU) and its vectors pass the float32 check, else float32. bfloat16: torch autocast or OpenVINO's "
        "bf16 inference (~0.7x / ~0.44x float32's time on such CPUs, mean cosine 0.99998). int8: torch dynamic "
        "quantization, never chosen by auto (mean cosine ~0.93 to float32). Vectors of each backend and "
        "precision are stored apart.",
    )
    auto_min_cosine: float = Field(
        0.9999,
        gt=0,
        le=1,
        description="auto accepts a faster backend/precision only if its vectors of a fixed check batch have at "
        "least this mean cosine to PyTorch float32's.",
    )
    cache_dir: str | None = Field(
        None,
        description="Folder for converted models (OpenVINO) and auto's check results; None: $NEGMINER_CACHE_DIR, "
        "else $XDG_CACHE_HOME/negminer, else ~/.cache/negminer.",
    )

    query_prompt: str | None = Field(
        None,
        description="Literal prompt put before every anchor (e.g. 'query: ' for E5). None: the model's own "
        "query prompt (what sentence-transformers' encode_query applies), or none.",
    )
    query_prompt_name: str | None = Field(
        None, description="Name of one of the model's prompts (config_sentence_transformers.json) for the anchors."
    )
    document_prompt: str | None = Field(
        None,
        description="Literal prompt put before every positive and corpus text (e.g. 'passage: '). None: the "
        "model's own document prompt (what encode_document applies), or none.",
    )
    document_prompt_name: str | None = Field(
        None, description="Name of one of the model's prompts for the positives and corpus texts."
    )

    @model_validator(mode="after")
    def _check_precomputed(self) -> EmbedConfig:
        if (self.anchor_vectors is None) != (self.doc_vectors is None):
            raise ValueError("anchor_vectors and doc_vectors are given together or not at all")
        if self.anchor_vectors is not None and (given := self._given_prompt_keys()):
            raise ValueError(f"prompts ({', '.join(given)}) apply to a model, not to precomputed vectors: remove them")
        return self

    @model_validator(mode="after")
    def _check_prompts(self) -> EmbedConfig:
        for side in ("query", "document"):
            if getattr(self, f"{side}_prompt") is not None and getattr(self, f"{side}_prompt_name") is not None:
                raise ValueError(
                    f"{side}_prompt and {side}_prompt_name are both set: give the literal prompt or the name "
                    "of one of the model's prompts, not both"
                )
        return self

    def _given_prompt_keys(self) -> list[str]:
        keys = ("query_prompt", "query_prompt_name", "document_prompt", "document_prompt_name")
        return [key for key in keys if getattr(self, key) is not None]

    @model_validator(mode="after")
    def _check_precision(self) -> EmbedConfig:
        if self.backend == "onnx":
            raise ValueError(
                "backend onnx is not implemented: ONNX Runtime measured 0.94x PyTorch float32's time here and its "
                "int8 quantization a mean cosine of 0.946 to float32 (docs/embedding.md); use openvino or auto"
            )
        if self.processes > 1 and (self.precision not in ("auto", "float32") or self.backend not in ("auto", "torch")):
            raise ValueError(
                f"backend {self.backend} with precision {self.precision} runs in this process only: set processes "
                "to 1 (sentence-transformers' worker processes run plain PyTorch float32)"
            )
        return self

    @property
    def precomputed(self) -> bool:
        return self.anchor_vectors is not None


class _Seeded(_Frozen):
    seed: int = Field(12, ge=0, le=_SEED_MAX, description="Seed of the sampling (a non-negative integer).")


class RetrievalConfig(_Seeded):
    """How candidates are retrieved: what ``refilter`` cannot change, since it reuses them.

    The seed also draws the anchors an approximate index measures its recall on.
    """

    search_depth: int = Field(100, ge=1, description="Candidates retrieved per anchor (before excluding positives).")
    search_batch_size: int = Field(4096, ge=1, description="Anchors searched per FAISS call.")
    search_shard_size: int = Field(
        100_000, ge=1, description="Anchors per search task: the unit the flow maps over (and Dask distributes)."
    )
    sources: tuple[CandidateSource, ...] = Field(
        ("dense",),
        min_length=1,
        description="Views that propose candidates, fused into one list per anchor: dense (the embedding "
        "model's nearest neighbours), bm25 (lexical, bm25s) and dense2 (the nearest neighbours under "
        "second_model). Every candidate's score stays the embedding model's cosine.",
    )
    second_model: str | None = Field(
        None,
        description="Local sentence-transformers folder of the dense2 source: a second embedding model whose "
        "nearest neighbours join the candidates. Embedded through the store with the embed section's "
        "settings (its own prompts, if it has any) and indexed like the first; needs dense2 in sources.",
    )
    fusion: Fusion = Field(
        "rrf",
        description="How several sources' lists merge: rrf (reciprocal-rank fusion) or score (each list's "
        "scores min-max normalised per anchor, summed).",
    )
    rrf_k: int = Field(60, ge=1, description="Reciprocal-rank fusion constant: 1/(rrf_k + rank) per source.")
    bm25_shard_docs: int = Field(
        1_000_000,
        ge=1,
        description="Docs per BM25 index shard (corpus-global idf, so shard scores compare); a search task "
        "loads one shard at a time.",
    )

    @field_validator("sources")
    @classmethod
    def _check_sources(cls, sources: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(sources)) != len(sources):
            raise ValueError(f"{list(sources)} names a source twice")
        return sources

    @model_validator(mode="after")
    def _check_second_model(self) -> RetrievalConfig:
        if ("dense2" in self.sources) != (self.second_model is not None):
            raise ValueError(
                "the dense2 source and second_model go together: name the second model's local folder in "
                "second_model and add dense2 to sources, or neither"
            )
        return self

    @property
    def hybrid(self) -> bool:
        """Whether candidates come from anything but the dense index alone."""
        return self.sources != ("dense",)


class SelectionConfig(_Seeded):
    """How negatives are chosen among the retrieved candidates: everything ``refilter`` may change.

    ``strategy`` names a preset from :data:`STRATEGY_PRESETS`; options given explicitly
    (in the YAML file or on the command line) override the preset's values. The default,
    ``auto``, picks ``naive`` or ``simans`` from curation's estimate of how many candidates are
    relevant (:mod:`negminer.mining.auto_strategy`); the field defaults equal the ``simans``
    preset, which ``strategy: null`` keeps as given (``naive`` is sentence-transformers' top-k).
    """

    strategy: StrategyName | None = Field(
        "auto",
        description="Named preset of selection settings (auto: naive or simans, chosen from curation's "
        "noise.negatives_relevant); explicit options override it.",
    )
    auto_naive_below: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="strategy auto picks naive (top-k after curation) when curation estimates that fewer than "
        "this share of the candidates are relevant, simans otherwise or when curation estimated nothing.",
    )
    num_negatives: int = Field(3, ge=1, description="Negatives per anchor.")
    range_min: int = Field(0, ge=0, description="Skip candidates with raw rank below this.")
    range_max: int | None = Field(None, ge=1, description="Skip candidates with raw rank at or above this.")
    min_score: float | None = Field(None, description="Skip candidates whose cosine to the anchor is below this.")
    max_score: float | None = Field(None, description="Skip candidates whose cosine to the anchor is above this.")
    min_score_percentile: float | None = Field(
        None, ge=0, le=100, description="min_score as a percentile of this run's positive scores."
    )
    max_score_percentile: float | None = Field(
        None, ge=0, le=100, description="max_score as a percentile of this run's positive scores."
    )
    absolute_margin: float | None = Field(
        None, ge=0, description="Skip candidates with score + margin above the anchor's lowest positive score."
    )
    relative_margin: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Skip candidates above positive score × (1 − margin) (NV-Retriever; 0.05 = TopK-PercPos 95%).",
    )
    semi_hard_margin: float | None = Field(
        None, gt=0, description="Keep positive − m <= score < positive (FaceNet semi-hard)."
    )
    sampling_strategy: SamplingStrategy = Field(
        "simans", description="top, random or simans; the default is chosen in docs/strategies.md."
    )
    simans_a: float = Field(50.0, gt=0, description="SimANS sharpness a in exp(-a·(score − positive − b)²).")
    simans_b: float = Field(-0.1, description="SimANS offset b: the peak sits at positive + b.")
    output_format: OutputFormat = Field(
        "triplet",
        description="Training view layout, as sentence-transformers' mine_hard_negatives: one row per negative, "
        "one row per anchor with negative_1..n, (anchor, text, label) rows, or (anchor, texts, labels) rows.",
    )
    output_scores: bool = Field(
        False, description="Also write scored.parquet: the training view plus scores and difficulty columns."
    )
    output_curriculum: bool = Field(
        False,
        description="Also write the training view as curriculum stages, easy to hard: curriculum-1-easy.parquet, "
        "curriculum-2-medium.parquet, curriculum-3-hard.parquet (same columns; train on them in that order).",
    )
    difficulty_medium_quantile: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="A candidate is medium (not easy) from this quantile of the run's score − positive score "
        "margins (over every retrieved non-positive candidate).",
    )
    difficulty_hard_quantile: float = Field(
        0.9, gt=0, lt=1, description="A candidate is hard from this quantile of the run's margins."
    )
    audit_extra_positives: bool = Field(
        False, description="A document a reviewer confirmed relevant (negminer audit) becomes an extra positive."
    )
    cross_encoder: str | None = Field(
        None,
        description="Local sentence-transformers CrossEncoder folder whose scores replace the cosines in "
        "min_score/max_score, the margins and the top order (as mine_hard_negatives' cross_encoder).",
    )
    cross_encoder_batch_size: int = Field(64, ge=1, description="Pairs per cross-encoder forward pass.")
    select_shard_size: int = Field(
        100_000,
        ge=1,
        description="Anchors per selection task: the unit the flow maps over (and Dask distributes), "
        "and a killed run's unit of resume. The output does not depend on it (with cross_encoder, its scores "
        "can differ in their last bits, as the model pads each batch to its longest pair).",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("strategy") in STRATEGY_PRESETS:
            return {**STRATEGY_PRESETS[data["strategy"]], **data}
        return data

    @model_validator(mode="after")
    def _check_selection_bounds(self) -> SelectionConfig:
        if self.range_max is not None and self.range_max <= self.range_min:
            raise ValueError(f"range_max ({self.range_max}) must be > range_min ({self.range_min})")
        _check_bounds("min_score", self.min_score, "max_score", self.max_score)
        _check_bounds(
            "min_score_percentile",
            self.min_score_percentile,
            "max_score_percentile",
            self.max_score_percentile,
        )
        _check_bounds(
            "difficulty_medium_quantile",
            self.difficulty_medium_quantile,
            "difficulty_hard_quantile",
            self.difficulty_hard_quantile,
        )
        if self.cross_encoder is not None and (
            self.min_score_percentile is not None or self.max_score_percentile is not None
        ):
            raise ValueError(
                "min_score_percentile/max_score_percentile are percentiles of the cosines, taken before the "
                "cross-encoder scores anything: with cross_encoder give min_score/max_score in its scale"
            )
        if self.output_curriculum and self.output_format == "labeled-pair":
            raise ValueError(
                "output_curriculum needs rows that hold their negatives: use output_format triplet, "
                "n-tuple or labeled-list (labeled-pair rows of one anchor would fall into different stages)"
            )
        return self


class MineConfig(RetrievalConfig, SelectionConfig):
    """The ``mine`` section of the YAML file: retrieval and selection settings side by side.

    Stages take the part they use (:attr:`retrieval`, :attr:`selection`); users write one
    flat section, as sentence-transformers' ``mine_hard_negatives`` takes one flat call.
    """

    @model_validator(mode="after")
    def _check_window_depth(self) -> MineConfig:
        if self.range_max is not None and self.range_max > self.search_depth:
            raise ValueError(f"range_max ({self.range_max}) must be <= search_depth ({self.search_depth})")
        return self

    @property
    def retrieval(self) -> RetrievalConfig:
        return RetrievalConfig(**self.model_dump(include=set(RetrievalConfig.model_fields)))

    @property
    def selection(self) -> SelectionConfig:
        return SelectionConfig(**self.model_dump(include=set(SelectionConfig.model_fields)))


def _check_bounds(low_name: str, low: float | None, high_name: str, high: float | None) -> None:
    if low is not None and high is not None and low >= high:
        raise ValueError(f"{low_name} ({low}) must be < {high_name} ({high})")


class CurateConfig(_Frozen):
    """Confident-learning curation of the candidate pairs (see docs/curation.md).

    Each (anchor, document) pair is a binary example: given positives are label 1, mined
    candidates label 0. Out-of-sample probabilities from anchor-grouped cross-validation go
    to cleanlab; flagged pairs are acted on by the policy of their kind.
    """

    enabled: bool = Field(True, description="Run the curation stage between search and select.")
    max_rank: int = Field(
        100,
        ge=1,
        description="Candidates with raw rank below this are scored and can be flagged; the table is "
        "search_depth + the most positives of an anchor deep, and deeper rows are not judged.",
    )
    tail_samples: int = Field(
        50, ge=0, description="Random documents per anchor from outside the window, as label-0 rows."
    )
    n_splits: int = Field(5, ge=2, description="Folds of the anchor-grouped cross-validation.")
    classifier: CurationClassifier = Field(
        "logistic_regression", description="Model that judges pairs from their features (out-of-fold predictions)."
    )
    neighbor_anchors: int = Field(32, ge=1, description="Nearest other anchors used by the neighbourhood features.")
    neighbor_exact_max_anchors: int = Field(
        200_000,
        ge=1,
        description="Up to this many anchors their nearest anchors are searched exactly; above it with an "
        "IVF index (the exact search costs anchors squared).",
    )
    neighbor_min_recall: float = Field(
        0.95, gt=0, le=1, description="Recall@k the IVF index of the nearest-anchor search is tuned to."
    )
    neighbor_max_probe: int | None = Field(
        32,
        ge=1,
        description="Most IVF lists one nearest-anchor query scans, whatever recall that leaves (None: as many "
        "as neighbor_min_recall needs). Bounds the search's cost: at 1M anchors the recall tuning alone reached "
        "512 of 4096 lists, an eighth of all anchors per query.",
    )
    cross_anchor: bool = Field(
        False,
        description="Add features from other anchors' positives (is the document a positive of a "
        "similar anchor?). Sound when each anchor's positives were chosen independently; off by "
        "default because a positive shared by many anchors makes them learn popularity.",
    )
    second_view: bool = Field(
        True, description="Adjust candidates' relevance by their similarity to the anchor's positives (EM)."
    )
    false_negative_quantile: float | None = Field(
        0.25,
        gt=0,
        lt=1,
        description="Also flag a candidate whose relevance reaches this quantile of the relevance "
        "of the given positives in the window: lower flags more (None: cleanlab's flags only).",
    )
    near_duplicate_threshold: float = Field(
        0.95, gt=0, le=1, description="Cosine to a positive at or above which a candidate is a near-duplicate."
    )
    false_negative_action: FalseNegativeAction = Field(
        "auto",
        description="What happens to a candidate flagged as likely relevant: drop (the next candidate replaces it "
        "as a negative), quarantine, keep (it stays a negative; the flag is recorded and queued for review), "
        "relabel (also an extra positive of its anchor, in every output format, until a reviewer says otherwise); "
        "auto: drop when curation estimates at least false_negative_drop_from of the candidates relevant, keep "
        "below it, where a flag is more often wrong than right.",
    )
    false_negative_drop_from: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="false_negative_action auto drops flagged candidates from this estimated share of relevant "
        "candidates (noise.negatives_relevant) up, and keeps them below it; the same point as "
        "mine.auto_naive_below by default.",
    )
    null_samples: int = Field(
        200,
        ge=1,
        description="Random documents per anchor (a seeded draw from the whole pool) that a given positive's "
        "cosine is compared with: the null of the false-positive check with false_positive_score cosine (unused "
        "with relevance). Memory grows with anchors times this.",
    )
    false_positive_score: Literal["cosine", "relevance"] = Field(
        "relevance",
        description="What places a given positive among its anchor's random documents: its cosine against "
        "null_samples fresh random documents, or the relevance of a judge trained with the tail samples weighted "
        "up to stand for the pool, against the anchor's window and tail samples (stratified; one more "
        "cross-validated model).",
    )
    false_positive_p_value: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Flag a given positive false_positive when its p-value under the anchor's null (the share "
        "of random documents scoring at least as high) reaches this: it does not beat that share of the pool.",
    )
    false_positive_confidence: float = Field(
        0.8,
        gt=0,
        le=1,
        description="A flagged positive whose confidence of being a random document (the estimated share of "
        "random documents among the positives at least as random-looking) reaches this gets "
        "false_positive_action; a less confident flag gets "
        "false_positive_uncertain_action.",
    )
    false_positive_max_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Largest plausible share of wrong given positives: where more than this share look like "
        "random documents, the positives are loose rather than wrong, and every confidence is scaled by this "
        "share over the estimated one (so such a dataset's flags are kept for audit, not excluded).",
    )
    false_positive_corroborating_anchors: int = Field(
        10,
        ge=0,
        description="A given positive that one of its anchor's this many nearest other anchors also has as a "
        "given positive is corroborated: its confidence of being a random document is scaled by the chance of "
        "that for a random document over the share of the given positives corroborated, so it stays in "
        "training (0: off). 10 raised the precision of the excluded planted errors on SciFact from 0.84-0.91 "
        "to 0.93-0.96 at nearly the same recall; on NFCorpus the positives it keeps trained a model level "
        "with one without them (within the seed spread).",
    )
    false_positive_action: CurationAction = Field(
        "quarantine", description="What happens to a given positive confidently flagged as a random document."
    )
    false_positive_uncertain_action: CurationAction = Field(
        "keep",
        description="What happens to a given positive flagged false_positive below false_positive_confidence "
        "(keep: it stays in training and waits in the audit queue).",
    )
    near_duplicate_action: CurationAction = Field(
        "drop", description="What happens to a candidate that nearly duplicates a positive."
    )
    cross_encoder: str | None = Field(
        None, description="Local sentence-transformers CrossEncoder folder; adds its score as a feature."
    )
    cross_encoder_batch_size: int = Field(64, ge=1, description="Pairs per cross-encoder forward pass.")
    issue_rule: CurationIssueRule = Field(
        "confident_joint",
        description="cleanlab verdict that flags a pair: membership of an off-diagonal cell of the "
        "confident joint, or cleanlab.filter.find_label_issues (which also needs the model to "
        "prefer the other class).",
    )
    batched_above: int = Field(
        5_000_000, ge=1, description="Rows above which find_label_issues runs batched (find_label_issues rule)."
    )
    seed: int = Field(
        12,
        ge=0,
        le=_CLASSIFIER_SEED_MAX,
        description="Seed of the folds, tail samples and classifier (a non-negative integer below 2**32).",
    )
    fit_anchors: int = Field(
        10_000,
        ge=2,
        description="Anchors whose rows train the judges: every anchor up to this many, above it a seeded "
        "sample of anchor families of about this size. Curation's memory grows with this, not with the dataset.",
    )
    shard_anchors: int = Field(
        10_000, ge=1, description="Anchors judged at once once the judges are trained (the unit of memory)."
    )
    shard_threads: int = Field(
        2,
        ge=1,
        description="Shards judged at the same time by a run in one process, on threads (on Dask the "
        "workers share the shards out instead). Half of a shard's time is spent outside Python's lock, "
        "reading memory-mapped vectors and in numerical kernels, so two shards keep two cores busy; each "
        "holds one shard's memory. The output does not depend on it.",
    )

    @model_validator(mode="after")
    def _check_relabel(self) -> CurateConfig:
        for key in ("false_positive_action", "false_positive_uncertain_action", "near_duplicate_action"):
            if getattr(self, key) == "relabel":
                raise ValueError(
                    f"{key}: relabel makes a candidate flagged false_negative a positive; for this kind use "
                    "drop, quarantine or keep"
                )
        return self


class IndexConfig(_Frozen):
    """Which FAISS index searches the pool: exact up to a size, approximate beyond it."""

    kind: str = Field("auto", description='"auto", "flat", or a FAISS factory string ("IVF4096,Flat", "HNSW32").')
    exact_max_docs: int = Field(200_000, ge=1, description='"auto" searches exactly up to this many docs.')
    min_recall: float = Field(0.98, gt=0, le=1, description="Recall@k an approximate index is tuned to reach.")
    recall_sample: int = Field(1000, ge=10, description="Anchors used to measure recall at run time.")
    use_gpu: bool | None = Field(None, description="None uses a GPU when faiss sees one.")
    shard_docs: int | None = Field(
        2_500_000,
        ge=1,
        description="Above this many docs the pool gets one index per consecutive range of shard_docs "
        "docs; each search task loads one at a time and keeps every anchor's top-k across them "
        "(exact over flat shards), so a worker holds one shard's index, not the whole pool's. "
        "None: one index whatever the size (a 10M pool's IVF16384 k-means takes hours on 2 cores).",
    )


class RunConfig(_Frozen):
    """What a deployed (scheduled) run mines: the ``run`` section that ``negminer serve`` reads.

    Relative paths are resolved against the YAML file's folder when the deployment is served.
    """

    pairs: str = Field(description="Pairs file or folder of Parquet files.")
    out: str = Field(description="Datasets root folder.")
    name: str = Field(description="Dataset name: versions go to OUT/NAME/vNNNN.")
    corpus: str | None = Field(None, description="Corpus file or folder (optional).")
    store: str | None = Field(None, description="Embedding store (default OUT/.embeddings).")


class ScheduleConfig(_Frozen):
    """When ``negminer serve`` runs the deployment (``--cron`` / ``--timezone`` override these)."""

    cron: str | None = Field(None, description='Cron string, e.g. "0 3 * * *" for 03:00 every day.')
    timezone: str | None = Field(None, description="IANA time zone of the cron string; None is UTC.")
    deployment: str = Field("nightly", description="Name of the Prefect deployment.")


class DiagnosticsConfig(_Frozen):
    """Diagnostics of the embedding space (Wang & Isola's alignment and uniformity) and of the candidates.

    A mined version records them in its manifest's ``diagnostics`` (from the vectors the run
    stored, nothing re-embedded); ``negminer evaluate`` measures them for the base and each
    fine-tuned model on the evaluation set.
    """

    enabled: bool = Field(True, description="Compute the diagnostics (manifest `diagnostics`, evaluate's records).")
    sample: int = Field(
        2048,
        ge=2,
        description="Vectors (anchors and documents together, chosen by a seeded hash of their ids) that "
        "uniformity averages over, all distinct pairs of them; evaluate also caps alignment's relevant "
        "pairs at this many.",
    )
    alpha: float = Field(2.0, gt=0, description="Alignment's exponent: mean ||f(x) − f(y)||^alpha over positive pairs.")
    t: float = Field(2.0, gt=0, description="Uniformity's scale: log mean exp(−t·||f(x) − f(y)||²) over pairs.")
    block_rows: int = Field(
        1024, ge=1, description="Rows per block of pairwise distances (memory grows with its square, never with n²)."
    )
    batch_rows: int = Field(65_536, ge=1, description="Pairs or candidate rows read per batch.")
    histogram_bins: int = Field(
        20, ge=1, description="Bins over [0, 4] of the squared-distance histograms (positive, negative, random pairs)."
    )
    seed: int = Field(12, ge=0, le=_SEED_MAX, description="Seed of the sample.")


class EvaluateConfig(_Frozen):
    """What ``negminer evaluate`` measures and the fixed training budget it fine-tunes with.

    Not a section of :class:`PipelineConfig`: evaluating never changes a dataset version. The
    training defaults are bench/downstream.py's CPU budget (240 steps x 16 triplets).
    """

    model: str | None = Field(
        None, description="Local sentence-transformers folder to evaluate and train; None: packaged all-MiniLM-L6-v2."
    )
    split: str | None = Field(
        "test",
        description="Queries of this split (query_splits.parquet, or BEIR's qrels/SPLIT.tsv); None: every query. "
        "A set without split information is used whole.",
    )
    titles: bool = Field(False, description="Put each document's title before its text (BEIR's convention).")
    max_queries: int | None = Field(
        None, ge=1, description="Evaluate on the first N queries by query id (a quick check, not the protocol)."
    )
    max_corpus: int | None = Field(
        None, ge=1, description="Keep the relevant documents plus the first others by id, N in all (a quick check)."
    )
    steps: int = Field(240, ge=1, description="Training steps for each --train/--against version.")
    batch_size: int = Field(16, ge=1, description="Training rows per step (MultipleNegativesRankingLoss batch).")
    learning_rate: float = Field(5e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the steps with a linear learning-rate warmup.")
    max_seq_length: int | None = Field(
        128, ge=1, description="Token length for training and evaluation; None keeps the model's own."
    )
    seed: int = Field(1, ge=0, le=_CLASSIFIER_SEED_MAX, description="Seeds the model's training and batch order.")
    precision: TrainingPrecision = Field(
        "float32",
        description="Training arithmetic: float32, or bfloat16 mixed precision (autocast; weights stay float32). "
        "bfloat16 trains about 1.4x faster on CPUs with AVX512-BF16 or AMX and is slower on CPUs without them.",
    )
    eval_batch_size: int = Field(32, ge=1, description="Texts per encoding batch during evaluation.")
    device: str | None = Field(None, description="torch device; None picks CUDA when present.")
    diagnostics: DiagnosticsConfig = Field(
        DiagnosticsConfig(), description="Alignment and uniformity of every arm's model on the evaluation set."
    )


class PipelineConfig(_Frozen):
    """Everything one mining run needs besides its input paths.

    The optional ``run`` and ``schedule`` sections describe a deployment (``negminer serve``);
    ``negminer mine`` ignores them.
    """

    input: InputConfig = InputConfig()
    embed: EmbedConfig = EmbedConfig()
    mine: MineConfig = MineConfig()
    index: IndexConfig = IndexConfig()
    curate: CurateConfig = CurateConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    run: RunConfig | None = None
    schedule: ScheduleConfig | None = None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> PipelineConfig:
        """Load a YAML file; `overrides` are `section.key` values applied on top.

        Example:
            >>> PipelineConfig.from_yaml("nightly.yaml", **{"mine.num_negatives": 5})  # doctest: +SKIP
        """
        return cls.from_dict(read_yaml_sections(path), source=str(path), **overrides)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config", **overrides: Any) -> PipelineConfig:
        """Validate a nested dict; errors name the offending key, e.g. `mine.num_negatives`."""
        # an empty section (``mine:`` with nothing under it) reads as None: as if it were absent
        merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items() if v is not None}
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            if not isinstance(merged.setdefault(section, {}), dict):
                raise ConfigError(f"{source}: {section}: must be a mapping of settings, got {merged[section]!r}")
            merged[section][key] = value
        try:
            return cls.model_validate(merged)
        except ValidationError as err:
            raise ConfigError(f"{source}: {_describe(err)}") from err


def _describe(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key {key!r}")
        else:
            parts.append(f"{key}: {item['msg']}")
    return "; ".join(parts)


def read_yaml_sections(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file; clear errors for a missing or bad file."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: config file not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw
