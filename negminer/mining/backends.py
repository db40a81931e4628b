"""Which engine runs the forward pass, in which arithmetic: ``embed.backend`` and ``embed.precision``.

An :class:`Encoding` is a concrete (backend, precision) pair. :func:`resolve_encoding` turns a
config's ``auto`` values into one:

* candidates, fastest first (measured on this project's 2-core AVX512-BF16 CPU, all-MiniLM-L6-v2,
  NFCorpus abstracts, docs/embedding.md): OpenVINO bfloat16 (~0.4x PyTorch float32's time),
  PyTorch bfloat16 autocast (~0.7x), PyTorch float32 (the reference). OpenVINO only when it is
  installed, the model runs on the CPU and in one process; bfloat16 only where the hardware
  runs it natively (AVX512-BF16/AMX, or a GPU that supports it). int8 is never a candidate
  (mean cosine ~0.93 to float32 on the check batch);
* each candidate but the reference must give vectors of a fixed check batch
  (:data:`CHECK_TEXTS`) with a mean cosine of at least ``embed.auto_min_cosine`` to PyTorch
  float32's; the first that does is chosen. A candidate that cannot be built (a model the
  OpenVINO conversion does not handle) is skipped with a warning. Results are kept per model,
  candidate and library versions in ``CACHE/checks/``, so the check runs once per machine.

The choice is logged and written to the manifest (``model.backend``, ``model.precision``); the
embedding store's key names it (:attr:`Encoding.key_suffix`), so vectors of different encodings
never mix.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from negminer.config import EmbedConfig
from negminer.errors import ConfigError
from negminer.mining.allocator import freeze_long_lived
from negminer.mining.encoder import MODELS_KEPT

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

Backend = Literal["torch", "openvino"]
Precision = Literal["float32", "bfloat16", "int8"]

# auto's fixed check batch: varied lengths (one beyond 256 tokens, so truncation is exercised too).
CHECK_TEXTS: tuple[str, ...] = (
    "Vitamin D supplementation reduces the risk of hip fracture in older adults.",
    "What causes the northern lights?",
    "A man is eating a piece of bread.",
    "Statins lower LDL cholesterol and reduce cardiovascular events in patients at high risk.",
    "How do I reset my router password?",
    "The mitochondrion produces most of the chemical energy needed to power the cell's reactions.",
    "Smoking is the leading cause of lung cancer worldwide.",
    "query: best hiking trails near the coast",
    "In 1969 the Apollo 11 mission landed the first humans on the Moon; Neil Armstrong stepped out first.",
    "Gradient descent updates parameters in the direction of the negative gradient of the loss.",
    "Does intermittent fasting improve insulin sensitivity?",
    "passage: The Treaty of Westphalia ended the Thirty Years' War in 1648.",
    "Randomised controlled trials are the gold standard for evaluating medical interventions, because "
    "random allocation balances known and unknown confounders between the groups; blinding of participants "
    "and assessors further reduces bias, and pre-registered outcomes guard against selective reporting.",
    "Das Wetter ist heute schön.",
    "CRISPR-Cas9 edits genomes by cutting DNA at sites chosen by a guide RNA.",
    "Short.",
    " ".join(
        [
            "Chronic kidney disease is defined by a reduced glomerular filtration rate or markers of kidney "
            "damage persisting for more than three months, and it is associated with higher cardiovascular risk, "
            "anaemia, mineral and bone disorders and, in advanced stages, the need for dialysis or transplantation."
        ]
        * 8
    ),
)


class Encoding(NamedTuple):
    """A concrete backend and precision for the forward pass.

    Attributes:
        backend: "torch" or "openvino".
        precision: "float32", "bfloat16" or "int8".
    """

    backend: Backend
    precision: Precision

    @property
    def key_suffix(self) -> str:
        """What the store key and work folder add for these vectors: "" for PyTorch float32.

        Example:
            >>> Encoding("openvino", "bfloat16").key_suffix, Encoding("torch", "bfloat16").key_suffix
            ('-openvino-bfloat16', '-bfloat16')
        """
        parts = ([] if self.backend == "torch" else [self.backend]) + (
            [] if self.precision == "float32" else [self.precision]
        )
        return "".join(f"-{part}" for part in parts)

    @property
    def autocast(self) -> Literal["float32", "bfloat16"]:
        """The torch autocast precision `encode` runs under ("float32": none)."""
        return "bfloat16" if self.backend == "torch" and self.precision == "bfloat16" else "float32"

    @property
    def own_model(self) -> bool:
        """Whether these vectors need a model object of their own (converted or quantised)."""
        return self.backend != "torch" or self.precision == "int8"


REFERENCE = Encoding("torch", "float32")


def cache_root(config: EmbedConfig) -> Path:
    """The cache folder: ``embed.cache_dir``, $NEGMINER_CACHE_DIR, $XDG_CACHE_HOME/negminer, ~/.cache/negminer."""
    if config.cache_dir is not None:
        return Path(config.cache_dir).expanduser()
    if env := os.environ.get("NEGMINER_CACHE_DIR"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "negminer"


def openvino_installed() -> bool:
    """Whether the ``openvino`` package is installed (a negminer dependency; a minimal install may lack it)."""
    return importlib.util.find_spec("openvino") is not None


def candidates(config: EmbedConfig) -> list[Encoding]:
    """The encodings `config` allows, fastest first (see the module docstring); the last is checked by none.

    Example:
        >>> candidates(EmbedConfig(backend="torch", precision="float32"))
        [Encoding(backend='torch', precision='float32')]
    """
    device = _device(config)
    if config.backend != "auto":
        backends: list[Backend] = [config.backend]  # type: ignore[list-item]  # onnx is refused by the config
    else:
        on_openvino = openvino_installed() and device == "cpu" and config.processes == 1
        backends = ["openvino", "torch"] if on_openvino else ["torch"]
    out = []
    for backend in backends:
        if config.precision != "auto":
            out.append(Encoding(backend, config.precision))  # type: ignore[arg-type]
            continue
        if config.processes == 1 and _fast_bf16(backend, device):
            out.append(Encoding(backend, "bfloat16"))
        if backend == "torch" or config.backend != "auto":
            out.append(Encoding(backend, "float32"))
    return out


_LOCK = threading.RLock()


def resolve_encoding(config: EmbedConfig) -> Encoding:
    """The encoding `config` embeds with: its own values, or auto's choice (module docstring).

    Raises:
        ConfigError: an explicit backend that is not installed or cannot run this model.

    Example:
        >>> resolve_encoding(EmbedConfig(backend="torch", precision="bfloat16"))
        Encoding(backend='torch', precision='bfloat16')
    """
    if config.precomputed:
        return REFERENCE
    with _LOCK:
        return _resolve(config, str(cache_root(config)))


@cache
def _resolve(config: EmbedConfig, cache_dir: str) -> Encoding:
    encoding = _choose(config)
    freeze_long_lived()  # torch (and OpenVINO), imported to choose, live as long as the process
    return encoding


def _choose(config: EmbedConfig) -> Encoding:
    options = candidates(config)
    if config.backend != "auto" and config.precision != "auto":
        if options[0].backend == "openvino" and not openvino_installed():
            raise ConfigError(
                "embed.backend openvino needs the openvino package (a negminer dependency): pip install openvino"
            )
        return options[0]
    for option in options[:-1]:
        cosine = _checked_cosine(config, option)
        if cosine is not None and cosine >= config.auto_min_cosine:
            logger.debug(
                "embedding with %s %s (auto: mean cosine %.6f to torch float32 on the check batch)",
                option.backend,
                option.precision,
                cosine,
            )
            return option
        if cosine is not None:
            logger.debug(
                "auto: %s %s left out (mean cosine %.6f < %s)",
                option.backend,
                option.precision,
                cosine,
                config.auto_min_cosine,
            )
    logger.debug("embedding with %s %s (auto)", options[-1].backend, options[-1].precision)
    return options[-1]


def _checked_cosine(config: EmbedConfig, option: Encoding) -> float | None:
    """Mean cosine of `option`'s check-batch vectors to PyTorch float32's (cached on disk); None: not buildable."""
    from negminer.mining.encoder import model_fingerprint, resolve_model_path

    fingerprint = model_fingerprint(resolve_model_path(config.model))
    path = cache_root(config) / "checks" / f"{fingerprint[:32]}.json"
    entry = f"{option.backend}-{option.precision}-seq{config.max_seq_length}-{_device(config)}-{_versions(option)}"
    known = _read_checks(path)
    if entry in known:
        return known[entry]
    try:
        cosine = _measure_cosine(config, option)
    except ConfigError as err:
        logger.warning("auto: %s %s cannot run this model (%s); trying the next", option.backend, option.precision, err)
        return None
    _write_checks(path, {**_read_checks(path), entry: cosine})
    return cosine


def _measure_cosine(config: EmbedConfig, option: Encoding) -> float:
    import numpy as np

    from negminer.mining.encoder import encode, load_model

    texts = list(CHECK_TEXTS)
    # a copy of its own, dropped after the check: the run then holds only the model it embeds with
    reference_model = load_model(config.model, device=config.device, max_seq_length=config.max_seq_length)
    reference = encode(texts, reference_model, batch_size=8, processes=1, precision="float32")
    del reference_model
    model = encoding_model(config, option)
    vectors = encode(texts, model, batch_size=8, processes=1, precision=option.autocast)
    return float(np.mean(np.sum(reference * vectors, axis=1)))


def _read_checks(path: Path) -> dict[str, float]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable check results (%s); measuring again", path, err)
        return {}


def _write_checks(path: Path, checks: dict[str, float]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as handle:
            json.dump(checks, handle, indent=1, sort_keys=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)
        os.replace(handle.name, path)
    except OSError as err:  # a read-only cache: the check runs again next time
        logger.warning("%s: cannot keep the check results (%s)", path, err)
        with contextlib.suppress(OSError, NameError):
            os.unlink(handle.name)


def _versions(option: Encoding) -> str:
    import torch

    out = f"torch{torch.__version__}"
    if option.backend == "openvino":
        from importlib.metadata import version

        out += f"-ov{version('openvino')}"
    return out


def _device(config: EmbedConfig) -> str:
    """The device type the model runs on ("cpu", "cuda", ...)."""
    if config.device is not None:
        return config.device.split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _fast_bf16(backend: Backend, device: str) -> bool:
    """Whether bfloat16 runs natively on `device` for `backend` (so it can be faster than float32)."""
    import torch

    if backend == "openvino":
        from negminer.mining.openvino_model import openvino_has_bf16

        return openvino_has_bf16()
    if device == "cpu":
        probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(probe and probe())
    return device == "cuda" and torch.cuda.is_bf16_supported()


@lru_cache(maxsize=MODELS_KEPT)
def _own_model(
    model: str | None,
    device: str | None,
    max_seq_length: int | None,
    encoding: Encoding,
    cache_dir: str,
    fingerprint: str,
) -> SentenceTransformer:
    from negminer.mining.encoder import load_model

    loaded = load_model(model, device=device, max_seq_length=max_seq_length)
    if encoding.backend == "openvino":
        from negminer.mining.openvino_model import to_openvino

        converted = to_openvino(
            loaded, fingerprint=fingerprint, precision=encoding.precision, cache_dir=Path(cache_dir)
        )
    else:
        converted = _quantized(loaded)
    freeze_long_lived()  # the model and its libraries live as long as the process
    return converted


def _quantized(model: SentenceTransformer) -> SentenceTransformer:
    """`model` with its Linear layers quantised to dynamic int8 (torch), in place."""
    import warnings

    import torch

    if model.device.type != "cpu":
        raise ConfigError(f"embed.precision int8 runs on the CPU; the model is on {model.device}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    model.negminer_backend = "torch-int8"
    return model


def encoding_model(config: EmbedConfig, encoding: Encoding) -> SentenceTransformer:
    """The process's model that embeds with `encoding` under `config` (loaded, converted once).

    PyTorch float32 and bfloat16 share the plain model (bfloat16 is an autocast around it);
    OpenVINO and int8 have their own copy.

    Example:
        >>> model = encoding_model(EmbedConfig(), resolve_encoding(EmbedConfig()))  # doctest: +SKIP
    """
    from negminer.mining.embedder import shared_model

    if not encoding.own_model:
        return shared_model(config)
    from negminer.mining.encoder import model_fingerprint, resolve_model_path

    fingerprint = model_fingerprint(resolve_model_path(config.model))  # a model retrained in place: loaded again
    with _LOCK:
        return _own_model(
            config.model, config.device, config.max_seq_length, encoding, str(cache_root(config)), fingerprint
        )
