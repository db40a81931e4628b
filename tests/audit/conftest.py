"""A small real dataset version with a planted flagged.parquet, built without the model.

The texts are the shipped SciFact sample (real claims and abstracts). Candidates are retrieved
with TF-IDF cosine (fast, deterministic, topical) instead of the embedding model, selected
with the real :func:`select_negatives`, and written with the real :func:`write_version`.
flagged.parquet follows the curation contract: for the first anchors, the best-scoring chosen
negative is a ``false_negative`` (label quality below 0.25, lower the further it scores above
the anchor's positive), the best-scoring retrieved positive a ``false_positive`` (0.3–0.35) and
the second negative a ``near_duplicate`` (0.6–0.65), so the queue order is known.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

DATASET = "scifact-audit"
DEPTH = 8
FLAGGED_ANCHORS = 6


def _candidates(anchors: pa.Table, docs: pa.Table, pairs: pa.Table) -> pa.Table:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from negminer.mining.search import CANDIDATE_SCHEMA

    vectorizer = TfidfVectorizer(stop_words="english").fit(docs["text"].to_pylist())
    a = vectorizer.transform(anchors["text"].to_pylist())
    d = vectorizer.transform(docs["text"].to_pylist())
    scores = (a @ d.T).toarray().astype(np.float32)
    pair_rows = zip(pairs["anchor_idx"].to_numpy(), pairs["doc_idx"].to_numpy(), strict=True)
    positive = {(int(x), int(y)) for x, y in pair_rows}
    rows: dict[str, list] = {name: [] for name in CANDIDATE_SCHEMA.names}
    for anchor in range(anchors.num_rows):
        own = [doc for (x, doc) in positive if x == anchor]
        top = np.argsort(-scores[anchor], kind="stable")[:DEPTH]
        for rank, doc in enumerate(top):
            rows["anchor_idx"].append(anchor)
            rows["doc_idx"].append(int(doc))
            rows["rank"].append(rank)
            rows["score"].append(float(scores[anchor, doc]))
            rows["positive_score"].append(float(min(scores[anchor, own])))
            rows["is_positive"].append((anchor, int(doc)) in positive)
            rows["same_text_as_positive"].append(False)
            rows["same_text_as_anchor"].append(False)
    return pa.table(rows, schema=CANDIDATE_SCHEMA)


def _flagged(candidates: pa.Table) -> pa.Table:
    rows = []
    for anchor in range(FLAGGED_ANCHORS):
        mine = candidates.filter(pc.equal(candidates["anchor_idx"], anchor)).to_pylist()
        negatives = [r for r in mine if r["negative_slot"] is not None]
        positives = [r for r in mine if r["is_positive"]]
        # A negative scoring far above the anchor's positive is the likeliest label error.
        suspicion = 0.125 * (1 - math.tanh(4 * negatives[0]["score_minus_positive"]))
        plan = [("false_negative", negatives[0], suspicion), ("near_duplicate", negatives[1], 0.6 + anchor * 0.01)]
        if positives:
            plan.append(("false_positive", positives[0], 0.3 + anchor * 0.01))
        for kind, row, quality in plan:
            rows.append(
                {
                    "anchor_id": row["anchor_id"],
                    "doc_id": row["doc_id"],
                    "kind": kind,
                    "label_quality": round(quality, 4),
                    "score_minus_positive": row["score_minus_positive"],
                    "rank": row["rank"],
                    "action": "flag_only",
                }
            )
    return pa.Table.from_pylist(rows)


def build_version(root: Path, name: str = DATASET) -> Path:
    """Write one complete version with candidates, texts and flagged.parquet under `root`."""
    from negminer.config import MineConfig, PipelineConfig
    from negminer.mining.derive import SELECT_OPTIONS
    from negminer.mining.formats import fill_negative_grids, training_view
    from negminer.mining.strategies import select_negatives, stable_hash64
    from negminer.storage.inputs import prepare_inputs
    from negminer.storage.versions import write_version

    sample = Path(__file__).resolve().parents[2] / "examples" / "scifact-sample"
    prepared = prepare_inputs(sample / "pairs.parquet", sample / "corpus.parquet")
    anchors, docs, pairs = prepared.anchors, prepared.docs, prepared.pairs
    selection = select_negatives(
        _candidates(anchors, docs, pairs),
        anchor_hash=stable_hash64(anchors["anchor_id"].to_pylist()),
        doc_hash=stable_hash64(docs["doc_id"].to_pylist()),
        **MineConfig(strategy="naive", num_negatives=3).model_dump(include=SELECT_OPTIONS),
    )
    candidates = selection.candidates
    candidates = candidates.add_column(0, "anchor_id", anchors["anchor_id"].take(candidates["anchor_idx"]))
    candidates = candidates.add_column(1, "doc_id", docs["doc_id"].take(candidates["doc_idx"]))
    candidates = candidates.append_column(
        "score_minus_positive", pc.subtract(candidates["score"], candidates["positive_score"])
    )
    chosen = candidates.filter(pc.is_valid(candidates["negative_slot"]))
    grid = np.full((anchors.num_rows, 3), -1, np.int64)
    fill_negative_grids((grid, np.full(grid.shape, np.nan, np.float32)), chosen)
    triplets = training_view(
        pairs, anchors["text"].combine_chunks(), docs["text"].combine_chunks(), grid, output_format="triplet"
    )
    tables = {
        "triplets": triplets,
        "candidates": candidates,
        "anchors": anchors,
        "docs": docs,
        "pairs": pairs,
        "rejects": prepared.rejects,
        "flagged": _flagged(candidates),
    }
    config = PipelineConfig.from_dict({"mine": {"search_depth": DEPTH, "num_negatives": 3}})
    manifest = {
        "name": name,
        "config": config.model_dump(mode="json"),
        "counts": {"dropped_by_reason": selection.reason_counts},
    }
    return write_version(root, name, tables=tables, manifest=manifest)


@pytest.fixture(scope="session")
def version_template(tmp_path_factory) -> Path:
    """One built version (session-wide); tests copy it rather than write into it."""
    return build_version(tmp_path_factory.mktemp("audit-template"))


@pytest.fixture
def datasets_root(tmp_path, version_template) -> Path:
    """A fresh datasets root holding a copy of the built version."""
    root = tmp_path / "datasets"
    shutil.copytree(version_template.parents[1], root)
    return root


@pytest.fixture
def version_dir(datasets_root) -> Path:
    return datasets_root / DATASET / "v0001"


@pytest.fixture
def engine(tmp_path):
    """A new SQLite audit database."""
    from negminer.audit.db import open_db

    engine = open_db(f"sqlite:///{tmp_path / 'audit.db'}")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A new, empty audit database URL: SQLite, and PostgreSQL where one is configured.

    PostgreSQL runs when ``NEGMINER_TEST_POSTGRES_URL`` names a server (for example
    ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``; ``.ci/postgres.sh start`` starts
    a throw-away one and prints its URL, ``.ci/run`` does it for CI); each test gets its own
    database, dropped afterwards.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    admin_url = os.environ.get("NEGMINER_TEST_POSTGRES_URL")
    if not admin_url:
        pytest.skip("PostgreSQL not configured: set NEGMINER_TEST_POSTGRES_URL to test it")
    from sqlalchemy import create_engine, make_url

    name = f"negminer_audit_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def any_engine(db_url):
    """An audit database on each configured backend."""
    from negminer.audit.db import open_db

    engine = open_db(db_url)
    yield engine
    engine.dispose()
