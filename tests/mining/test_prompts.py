"""Prompts: anchors embedded as queries, documents as documents, each with its side's prompt.

A tiny local model is the packaged all-MiniLM-L6-v2 saved again with E5-style prompts
({"query": "query: ", "document": "passage: "}) in its config_sentence_transformers.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer.config import EmbedConfig, PipelineConfig
from negminer.errors import ConfigError
from negminer.mining.embedder import Embedder, Prompts, effective_prompts, prompts_digest, store_key
from negminer.stages.embed import embed_stage
from negminer.stages.refs import PromptsRef

pytestmark = pytest.mark.slow

ANCHORS = ["does vitamin d prevent fractures", "aspirin and colorectal cancer", "the shared text"]
DOCS = [
    "Vitamin D supplementation reduces fracture risk in older adults.",
    "Aspirin lowers the risk of colorectal cancer.",
    "the shared text",
    "The mitochondria is the powerhouse of the cell.",
]
OWN = {"query": "query: ", "document": "passage: "}


@pytest.fixture(scope="module")
def prompted(tmp_path_factory) -> Path:
    """The packaged model saved with prompts of its own and a short max_seq_length."""
    from sentence_transformers import SentenceTransformer

    from negminer.mining.encoder import resolve_model_path

    folder = tmp_path_factory.mktemp("models") / "minilm-prompted"
    model = SentenceTransformer(str(resolve_model_path(None)), device="cpu", prompts=OWN, local_files_only=True)
    model.max_seq_length = 32
    model.save(str(folder))
    return folder


@pytest.fixture(scope="module")
def loaded(prompted: Path):
    from negminer.mining.encoder import load_model

    return load_model(str(prompted), device="cpu", max_seq_length=None)


def config_of(prompted: Path, **options) -> EmbedConfig:
    # PyTorch float32, so the vectors equal sentence-transformers' own to 1e-5 (auto may pick bfloat16)
    return EmbedConfig(model=str(prompted), device="cpu", batch_size=4, backend="torch", precision="float32", **options)


def embed(work_dir: Path, store: Path, config: EmbedConfig):
    """The embed stage over ANCHORS and DOCS in a fresh work folder."""
    work_dir.mkdir(parents=True)
    for stem, texts in (("anchors", ANCHORS), ("docs", DOCS)):
        pq.write_table(pa.table({"text": texts}), work_dir / f"{stem}.parquet")
    return embed_stage(work_dir, config=config, store_root=store)


def test_the_saved_model_has_its_prompts_and_loads_offline(prompted: Path, loaded) -> None:
    saved = json.loads((prompted / "config_sentence_transformers.json").read_text())
    assert saved["prompts"]["query"] == "query: " and saved["prompts"]["document"] == "passage: "
    assert loaded.prompts["query"] == "query: " and loaded.max_seq_length == 32


def test_anchors_are_queries_and_documents_documents_with_the_models_prompts(prompted, loaded, tmp_path) -> None:
    ref = embed(tmp_path / "work", tmp_path / "store", config_of(prompted))
    anchors, docs = np.load(tmp_path / "work" / "anchors.npy"), np.load(tmp_path / "work" / "docs.npy")
    np.testing.assert_allclose(anchors, loaded.encode_query(ANCHORS, normalize_embeddings=True), atol=1e-5)
    np.testing.assert_allclose(docs, loaded.encode_document(DOCS, normalize_embeddings=True), atol=1e-5)
    # the same text as an anchor and as a document: two keys, two vectors
    assert not np.allclose(anchors[2], docs[2], atol=1e-3)
    assert ref.embedding["anchors"].embedded == 3 and ref.embedding["docs"].embedded == 4
    assert ref.model.prompts == PromptsRef(query="query: ", document="passage: ")  # the manifest's "model"


def test_a_literal_prompt_is_used_instead_of_the_models(prompted, loaded, tmp_path) -> None:
    embed(tmp_path / "work", tmp_path / "store", config_of(prompted, query_prompt="search_query: "))
    anchors, docs = np.load(tmp_path / "work" / "anchors.npy"), np.load(tmp_path / "work" / "docs.npy")
    expected = loaded.encode_query(ANCHORS, prompt="search_query: ", normalize_embeddings=True)
    np.testing.assert_allclose(anchors, expected, atol=1e-5)
    assert not np.allclose(anchors, loaded.encode_query(ANCHORS, normalize_embeddings=True), atol=1e-3)
    np.testing.assert_allclose(docs, loaded.encode_document(DOCS, normalize_embeddings=True), atol=1e-5)


def test_a_named_prompt_resolves_to_its_text(prompted) -> None:
    named = effective_prompts(config_of(prompted, query_prompt_name="document", document_prompt_name="query"))
    assert named == Prompts(query="passage: ", document="query: ", routed=False)
    with pytest.raises(ConfigError, match=r"embed\.query_prompt_name 'nope' is not one of the model's prompts"):
        effective_prompts(config_of(prompted, query_prompt_name="nope"))


def test_changing_a_prompt_changes_the_store_key_and_re_embeds(prompted, tmp_path) -> None:
    store = tmp_path / "store"
    first = embed(tmp_path / "first", store, config_of(prompted))
    again = embed(tmp_path / "again", store, config_of(prompted))
    assert first.embedding["anchors"].embedded == 3 and again.embedding["anchors"].embedded == 0
    assert again.embedding["docs"].embedded == 0
    changed = config_of(prompted, query_prompt="search_query: ")
    assert store_key(changed) != store_key(config_of(prompted))
    redone = embed(tmp_path / "changed", store, changed)
    assert redone.embedding["anchors"].embedded == 3 and redone.store.folder == store_key(changed)
    # the same literal text as the model's own prompt: the same vectors, the same key
    assert store_key(config_of(prompted, query_prompt="query: ")) == store_key(config_of(prompted))


def test_a_changed_prompt_gets_another_work_folder(prompted, sample_dir, tmp_path) -> None:
    from negminer.stages.workdir import work_dir_for

    def folder(**embed_options) -> Path:
        config = PipelineConfig(embed=config_of(prompted, **embed_options))
        return work_dir_for(tmp_path, "d", pairs=sample_dir / "pairs.parquet", corpus=None, config=config, store=None)

    assert folder() == folder() != folder(document_prompt="")


def test_no_prompts_keep_the_default_store_key_and_sides_alike() -> None:
    from negminer.mining.encoder import model_fingerprint, resolve_model_path

    plain = Embedder(EmbedConfig(backend="torch", precision="float32"))  # auto may add its encoding's suffix
    assert plain.prompts == Prompts(query="", document="", routed=False) and plain.prompts.alike
    assert plain.store_key == model_fingerprint(resolve_model_path(None))
    assert not plain.side("query").keyed_apart
    same = Embedder(EmbedConfig(query_prompt="Represent: ", document_prompt="Represent: "))
    assert same.prompts.alike and same.store_key.endswith(f"-prompts{prompts_digest(same.prompts)}")
    routed = Prompts(query="", document="", routed=True)  # a Router module: queries and documents apart
    assert not routed.alike and prompts_digest(routed) is not None


def test_sides_embedded_alike_share_one_embedding_of_a_text(tmp_path) -> None:
    config = EmbedConfig(device="cpu", batch_size=4, query_prompt="Represent: ", document_prompt="Represent: ")
    ref = embed(tmp_path / "work", tmp_path / "store", config)
    assert ref.embedding["anchors"].embedded == 3 and ref.embedding["docs"].embedded == 3  # "the shared text" once
    anchors, docs = np.load(tmp_path / "work" / "anchors.npy"), np.load(tmp_path / "work" / "docs.npy")
    np.testing.assert_array_equal(anchors[2], docs[2])


@pytest.mark.parametrize("side", ["query", "document"])
def test_a_literal_and_a_name_for_one_side_is_a_config_error(side) -> None:
    raw = {"embed": {f"{side}_prompt": "query: ", f"{side}_prompt_name": "query"}}
    with pytest.raises(ConfigError, match=f"{side}_prompt and {side}_prompt_name are both set"):
        PipelineConfig.from_dict(raw)


def test_prompts_do_not_apply_to_precomputed_vectors() -> None:
    raw = {"embed": {"anchor_vectors": "a.npz", "doc_vectors": "d.npz", "query_prompt": "query: "}}
    with pytest.raises(ConfigError, match=r"prompts \(query_prompt\) apply to a model, not to precomputed vectors"):
        PipelineConfig.from_dict(raw)


def test_the_python_api_takes_sentence_transformers_prompt_names(tmp_path, sample_dir) -> None:
    import negminer

    with pytest.raises(ConfigError, match="document_prompt and document_prompt_name are both set"):
        negminer.mine(sample_dir / "pairs.parquet", out=tmp_path, corpus_prompt="passage: ", corpus_prompt_name="x")


def test_the_cli_options_reach_the_config(tmp_path, sample_dir, monkeypatch) -> None:
    from typer.testing import CliRunner

    import negminer.flows.mine
    from negminer.cli import app

    seen = {}

    class Captured(Exception):
        pass

    def capture(*args, config, **kwargs):
        seen["embed"] = config.embed
        raise Captured

    monkeypatch.setattr(negminer.flows.mine, "run_mine", capture)
    options = ["--query-prompt", "query: ", "--document-prompt", "passage: "]
    CliRunner().invoke(app, ["mine", str(sample_dir / "pairs.parquet"), "--out", str(tmp_path), *options])
    assert (seen["embed"].query_prompt, seen["embed"].document_prompt) == ("query: ", "passage: ")
