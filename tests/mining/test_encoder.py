"""encode: multi-process CPU encoding equals one process; a batch that runs out of memory is halved."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from negminer.errors import ConfigError
from negminer.mining.encoder import adapted_batch_size, encode

TEXTS = [
    "Vitamin D supplementation reduces fracture risk.",
    "The mitochondria is the powerhouse of the cell.",
    "Aspirin lowers the risk of colorectal cancer.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "Statins reduce cardiovascular events in patients with high cholesterol.",
    "Smoking increases the risk of lung cancer.",
]


class FakeModel:
    """Runs out of memory above `fits` texts per batch; records the batches it was asked for.

    Its tokenizer makes one token per word; its vectors hold the text's character count.
    """

    max_seq_length = 256
    device = torch.device("cpu")

    def __init__(self, fits: int, error: type[BaseException]) -> None:
        self.fits, self.error, self.batch_sizes, self.batches = fits, error, [], []

    def tokenizer(self, texts: list[str], **options) -> dict[str, list[list[str]]]:
        return {"input_ids": [t.split() for t in texts]}

    def get_embedding_dimension(self) -> int:
        return 4

    def encode(self, texts: list[str], *, batch_size: int, **options) -> np.ndarray:
        self.batch_sizes.append(batch_size)
        if batch_size > self.fits:
            raise self.error("simulated: tried to allocate 2.00 GiB")
        self.batches.append(list(texts))
        return np.stack([np.full(4, len(t), np.float32) for t in texts])


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, MemoryError])
def test_out_of_memory_halves_the_batch_and_retries(error, caplog) -> None:
    model = FakeModel(fits=5, error=error)
    with caplog.at_level(logging.WARNING, logger="negminer.mining.encoder"):
        vectors = encode(TEXTS, model, batch_size=32, processes=1, precision="float32")
    assert model.batch_sizes[:4] == [32, 16, 8, 4] and set(model.batch_sizes[4:]) == {4}
    np.testing.assert_array_equal(vectors[:, 0], [len(t) for t in TEXTS])
    assert "out of memory at batch size 32" in caplog.text


def test_the_halved_batch_is_remembered_for_the_next_shards() -> None:
    model = FakeModel(fits=5, error=MemoryError)
    encode(TEXTS, model, batch_size=32, processes=1, precision="float32")
    assert adapted_batch_size(model) == 4
    model.batch_sizes.clear()
    encode(TEXTS, model, batch_size=32, processes=1, precision="float32")  # the next shard: no new failure
    assert set(model.batch_sizes) == {4}
    assert adapted_batch_size(FakeModel(fits=5, error=MemoryError)) is None  # per model


def test_out_of_memory_at_batch_size_one_is_raised() -> None:
    model = FakeModel(fits=0, error=torch.OutOfMemoryError)
    with pytest.raises(torch.OutOfMemoryError):
        encode(TEXTS, model, batch_size=4, processes=1, precision="float32")
    assert model.batch_sizes == [4, 2, 1]


def test_other_errors_are_not_retried() -> None:
    model = FakeModel(fits=0, error=ValueError)
    with pytest.raises(ValueError, match="simulated"):
        encode(TEXTS, model, batch_size=4, processes=1, precision="float32")
    assert model.batch_sizes == [4]


def test_batches_are_cut_by_token_count_not_by_characters() -> None:
    # by characters the two long words would lead; by tokens the many short words do
    texts = ["a b c d e", "Supercalifragilistic", "x y", "Antidisestablishmentarianism", "p q r s"]
    model = FakeModel(fits=32, error=MemoryError)
    vectors = encode(texts, model, batch_size=2, processes=1, precision="float32")
    by_tokens = [["a b c d e", "p q r s"], ["x y", "Supercalifragilistic"], ["Antidisestablishmentarianism"]]
    assert model.batches == by_tokens
    np.testing.assert_array_equal(vectors[:, 0], [len(t) for t in texts])


def test_token_counts_given_by_the_caller_set_the_order() -> None:
    model = FakeModel(fits=32, error=MemoryError)
    encode(
        ["one", "two", "three"], model, batch_size=1, token_counts=np.array([1, 3, 2]), processes=1, precision="float32"
    )
    assert model.batches == [["two"], ["three"], ["one"]]
    with pytest.raises(ValueError, match="2 entries for 3 texts"):
        encode(
            ["one", "two", "three"],
            model,
            token_counts=np.array([1, 2]),
            batch_size=32,
            processes=1,
            precision="float32",
        )


def test_counts_above_max_seq_length_tie_and_keep_their_order() -> None:
    model = FakeModel(fits=32, error=MemoryError)
    model.max_seq_length = 2
    encode(["a b c", "a b c d e", "a"], model, batch_size=1, processes=1, precision="float32")
    assert model.batches == [["a b c"], ["a b c d e"], ["a"]]


@pytest.mark.slow
def test_token_ordered_batches_give_sentence_transformers_vectors(model) -> None:
    texts = [*TEXTS, "short", "a much longer sentence " * 30]
    expected = model.encode(texts, batch_size=3, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(
        encode(texts, model, batch_size=3, processes=1, precision="float32"), expected, atol=1e-5
    )


def test_processes_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="processes"):
        encode(TEXTS, FakeModel(fits=1, error=MemoryError), processes=0, batch_size=32, precision="float32")


@pytest.mark.slow
@pytest.mark.extended
def test_two_processes_give_the_vectors_of_one(model) -> None:
    single = encode(TEXTS, model, batch_size=2, processes=1, precision="float32")
    pooled = encode(TEXTS, model, batch_size=2, processes=2, precision="float32")
    assert pooled.shape == single.shape == (len(TEXTS), 384) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, single, atol=1e-5)
    assert not np.array_equal(pooled[0], pooled[1])


@pytest.mark.slow
def test_processes_encode_in_separate_worker_processes(model) -> None:
    """The pool's workers are other processes, and they (not this one) run the forward passes."""
    import os

    from negminer.mining.encoder import multi_process_pool

    pool = multi_process_pool(model, 2)
    workers = [process.pid for process in pool["processes"]]
    assert len(set(workers)) == 2 and os.getpid() not in workers
    assert all(process.is_alive() for process in pool["processes"])
    before = {pid: _cpu_seconds(pid) for pid in workers}
    mine = time.process_time()
    encode(TEXTS * 40, model, batch_size=8, processes=2, precision="float32")
    busy = [_cpu_seconds(pid) - before[pid] for pid in workers]
    assert all(seconds > 0.05 for seconds in busy), busy  # each worker encoded a share
    assert time.process_time() - mine < sum(busy)  # this process mostly waited


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (/proc/PID/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_daemon_process_encodes_without_a_pool(monkeypatch, caplog) -> None:
    import multiprocessing

    class DaemonProcess:
        daemon = True

    class CpuModel(FakeModel):
        device = torch.device("cpu")

        def start_multi_process_pool(self, devices):
            raise AssertionError("a daemon process must not start a pool")

    monkeypatch.setattr(multiprocessing, "current_process", DaemonProcess)
    model = CpuModel(fits=32, error=MemoryError)
    with caplog.at_level(logging.WARNING, logger="negminer.mining.encoder"):
        vectors = encode(TEXTS, model, processes=2, batch_size=32, precision="float32")
    assert vectors.shape == (len(TEXTS), 4) and "daemon process" in caplog.text
