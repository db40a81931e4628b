"""float16 vs float32 embedding store: does mining pick the same negatives?

Mines the SciFact sample (examples/scifact-sample: 200 claims, 800 abstracts) twice through
the real stages (read → embed → index → search → select, curation off), once from a float32
store and once from a float16 store holding the same all-MiniLM-L6-v2 vectors (the benchmark
store's, rounded to float16, which is what ``embed.store_dtype: float16`` stores), and prints
how many candidates and chosen negatives agree and how far the scores move.

Needs the benchmark store (``python -m bench.warm_store scifact``); embeds nothing.
Run: python -m bench.float16_store [--strategy simans naive ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.common import STORE
from negminer import stages
from negminer.config import EmbedConfig, PipelineConfig
from negminer.mining.embedder import store_key
from negminer.storage.embedding_store import EmbeddingStore
from negminer.textkeys import content_hashes

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scifact-sample"


def _float16_store(root: Path, work: Path) -> None:
    """A float16 store with the benchmark store's vectors of the sample's texts."""
    source = EmbeddingStore(STORE, model_fingerprint=store_key(EmbedConfig()), dim=384, dtype="float32")
    target = EmbeddingStore(
        root, model_fingerprint=store_key(EmbedConfig(store_dtype="float16")), dim=384, dtype="float16"
    )
    for stem in ("anchors", "docs"):
        hashes = content_hashes(pq.read_table(work / f"{stem}.parquet", columns=["text"]).column("text").to_pylist())
        positions = source.lookup(hashes)
        if (positions < 0).any():
            raise SystemExit(f"{STORE}: lacks sample texts; run python -m bench.warm_store scifact")
        target.add(hashes, source.fetch(positions))


def _mine(folder: Path, store: Path, config: PipelineConfig) -> dict:
    work = folder / "work"
    stages.read_stage(SAMPLE / "pairs.parquet", SAMPLE / "corpus.parquet", work, config=config.input)
    if config.embed.store_dtype == "float16":
        _float16_store(store, work)
    stages.embed_stage(work, config=config.embed, store_root=store)
    search = stages.search_stage(work, config=config.mine, index_config=config.index)
    curated = stages.curate_stage(work, search, config=config.curate.model_copy(update={"enabled": False}))
    select = stages.select_stage(work, curated, config=config.mine)
    tables = {"candidates": pq.read_table(search.candidates), "selected": pq.read_table(select.selected)}
    return {"work": work, **tables}


def _pairs(table, mask=None) -> set[tuple[int, int]]:
    table = table if mask is None else table.filter(mask)
    return set(zip(table.column("anchor_idx").to_pylist(), table.column("doc_idx").to_pylist(), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", nargs="+", default=["simans", "naive", "positive-aware"])
    parser.add_argument("--num-negatives", type=int, default=5)
    args = parser.parse_args()
    print("| strategy | candidates identical (anchor, doc) | negatives identical | negatives | max abs score diff |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for strategy in args.strategy:
            runs = {}
            for dtype in ("float32", "float16"):
                config = PipelineConfig.from_dict(
                    {
                        "embed": {"store_dtype": dtype},
                        "mine": {"strategy": strategy, "num_negatives": args.num_negatives},
                        "curate": {"enabled": False},
                    }
                )
                store = STORE if dtype == "float32" else tmp / f"store-{strategy}"
                runs[dtype] = _mine(tmp / f"{strategy}-{dtype}", store, config)
            a, b = runs["float32"], runs["float16"]
            cand_a, cand_b = _pairs(a["candidates"]), _pairs(b["candidates"])
            chosen = [_pairs(r["selected"], pc.is_valid(r["selected"].column("negative_slot"))) for r in (a, b)]
            vectors = np.load(a["work"] / "docs.npy"), np.load(b["work"] / "docs.npy")
            diff = float(np.abs(vectors[0] - vectors[1]).max())
            print(
                f"| {strategy} | {len(cand_a & cand_b) / len(cand_a):.4f} ({len(cand_a & cand_b)}/{len(cand_a)}) | "
                f"{len(chosen[0] & chosen[1]) / len(chosen[0]):.4f} ({len(chosen[0] & chosen[1])}/{len(chosen[0])}) | "
                f"{len(chosen[1])} | {_max_score_diff(a['candidates'], b['candidates']):.2e} (vectors {diff:.1e}) |"
            )


def _max_score_diff(a, b) -> float:
    """Largest |score32 − score16| over the (anchor, doc) candidates both runs retrieved."""

    def keyed(t):
        return dict(
            zip(
                zip(t.column("anchor_idx").to_pylist(), t.column("doc_idx").to_pylist(), strict=True),
                t.column("score").to_pylist(),
                strict=True,
            )
        )

    ka, kb = keyed(a), keyed(b)
    return max(abs(ka[k] - kb[k]) for k in ka.keys() & kb.keys())


if __name__ == "__main__":
    main()
