"""Run a sentence-transformers model's transformer on OpenVINO, converted locally and cached.

Only the Hugging Face model inside each ``Transformer`` module runs on OpenVINO; tokenizing,
prompts, routing, pooling and normalising stay sentence-transformers' own, so a converted model
is called exactly like the original (``encode``, ``encode_query``, ``encode_document``).

The conversion (``openvino.convert_model`` on the PyTorch module, traced with the tokenizer's
own inputs, dynamic batch and sequence length) is written once under
``CACHE/openvino/<model fingerprint>-<module>-ov<version>-torch<version>/`` with float32
weights, atomically; later loads read it from there. Compiled kernels are cached under
``CACHE/openvino/compiled``. Nothing is fetched from a hub.

This module imports torch: import it inside functions (negminer.mining.backends does).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from negminer.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

# OpenVINO's names of the inference precisions negminer offers on this backend.
_OV_PRECISION = {"float32": "f32", "bfloat16": "bf16"}


def openvino_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX512-BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def to_openvino(
    model: SentenceTransformer, *, fingerprint: str, precision: str, cache_dir: Path
) -> SentenceTransformer:
    """Swap the transformer of every ``Transformer`` module of `model` for its OpenVINO version, in place.

    Args:
        model: a sentence-transformers model on the CPU, loaded for this purpose (it is changed).
        fingerprint: the model folder's content hash (names the cached conversion).
        precision: "float32" or "bfloat16", OpenVINO's inference precision.
        cache_dir: negminer's cache folder (``EmbedConfig.cache_dir`` resolved).

    Returns:
        `model`, whose forward passes now run on OpenVINO.

    Raises:
        ConfigError: openvino is not installed, the precision is not offered, the model is not on
            the CPU or has a transformer this conversion does not handle.

    Example:
        >>> fast = to_openvino(load_model(None, device="cpu", max_seq_length=None),
        ...     fingerprint="5f1c", precision="bfloat16", cache_dir=Path("~/.cache/negminer"))  # doctest: +SKIP
    """
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        raise ConfigError(
            "embed.backend openvino needs the openvino package (a negminer dependency): pip install openvino"
        )
    if precision not in _OV_PRECISION:
        raise ConfigError(
            f"embed.precision {precision} is not offered on the openvino backend (float32 or bfloat16); "
            "int8 runs on backend torch"
        )
    if model.device.type != "cpu":
        raise ConfigError(f"embed.backend openvino runs on the CPU; the model is on {model.device}")
    import openvino as ov
    from sentence_transformers.base.modules.transformer import Transformer

    core = ov.Core()
    core.set_property({"CACHE_DIR": str(cache_dir / "openvino" / "compiled")})
    settings = {
        "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
    }
    swapped = 0
    for name, module in model.named_modules():
        if not isinstance(module, Transformer):
            continue
        output_name = _text_output_name(module)
        xml = _converted(module, name or "0", fingerprint=fingerprint, cache_dir=cache_dir)
        compiled = core.compile_model(str(xml), "CPU", settings)
        module.model = _OpenVINOForward(compiled, config=module.model.config, output_name=output_name)
        swapped += 1
    if not swapped:
        raise ConfigError("embed.backend openvino: the model has no Transformer module to convert; use backend torch")
    model.negminer_backend = "openvino"  # encode() refuses worker processes for it
    return model


def _text_output_name(module: Any) -> str:
    """The output of the module's model that sentence-transformers reads for text (its forward only)."""
    params = module.modality_config.get("text") or {}
    output = params.get("method_output_name")
    if params.get("method") != "forward" or not isinstance(output, str):
        raise ConfigError(
            f"embed.backend openvino converts transformers read through forward() only; this model reads text "
            f"through {params.get('method')!r} / {output!r}: use backend torch"
        )
    return output


def _converted(module: Any, name: str, *, fingerprint: str, cache_dir: Path) -> Path:
    """The cached OpenVINO IR (.xml) of `module`'s transformer, converting it on first use."""
    import openvino as ov

    version = f"ov{ov.__version__.split('-')[0]}-torch{torch.__version__}"
    folder = cache_dir / "openvino" / f"{fingerprint[:32]}-{name.replace('.', '_')}-{version}"
    xml = folder / "model.xml"
    if xml.exists():
        return xml
    start = time.perf_counter()
    example = {k: v for k, v in module.preprocess(["An example sentence to trace the model with."]).items()}
    names = [k for k, v in example.items() if isinstance(v, torch.Tensor) and k != "prompt_length"]
    wrapper = _Traced(module.model, names).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: mask-only
        converted = ov.convert_model(wrapper, example_input=tuple(example[k] for k in names))
    for port, input_name in zip(converted.inputs, names, strict=True):
        port.get_tensor().set_names({input_name})
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        ov.save_model(converted, tmp / "model.xml", compress_to_fp16=False)  # float32 weights
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide a shared cache from other users
        os.replace(tmp, folder)
    except OSError:
        if not xml.exists():  # not another process that converted it meanwhile
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted the model to OpenVINO in %.1f s (cached in %s)", time.perf_counter() - start, folder)
    return xml


class _Traced(torch.nn.Module):
    """The transformer as a function of its input tensors (positional, in `names` order) for tracing."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.names, tensors, strict=True)), return_dict=True)
        return tuple(out.values())


class _OpenVINOForward(torch.nn.Module):
    """Stands in for the Hugging Face model inside a ``Transformer`` module: runs the compiled model.

    It returns the one output sentence-transformers reads (`output_name`) as a float32 CPU
    tensor; the module's ``config`` stays the original's.
    """

    def __init__(self, compiled: Any, *, config: Any, output_name: str) -> None:
        super().__init__()
        self.config = config
        self.output_name = output_name
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._inputs = [port.get_any_name() for port in compiled.inputs]
        self.register_buffer("_probe", torch.empty(0), persistent=False)  # device and dtype for callers

    @property
    def device(self) -> torch.device:
        return self._probe.device

    @property
    def dtype(self) -> torch.dtype:
        return self._probe.dtype

    def forward(self, **features: Any) -> dict[str, torch.Tensor]:
        missing = [name for name in self._inputs if name not in features]
        if missing:
            raise ValueError(f"the OpenVINO model needs inputs {missing} the tokenizer did not give")
        feeds = {name: np.ascontiguousarray(features[name].numpy()) for name in self._inputs}
        result = self._request.infer(feeds)
        return {self.output_name: torch.from_numpy(np.array(result[0], dtype=np.float32))}
