"""Loading tokenizer and model, dequantizing GGUF once into a safetensors cache.

Dequantizing a GGUF file takes many seconds (17 s for SmolLM2-135M on two cores); the result is
written as a plain transformers directory (safetensors + config + tokenizer) under the cache
directory, keyed by the source file's identity and the transformers version, so every later
load — by the runtime, the trainer or a test — is a fast safetensors load. The directory is
written beside its final name and renamed into place, so concurrent loaders never see half a
cache. A directory counts as a cache only with its marker, its config and its weights: one that
lacks any of them (a process of a distributed job other than the first, which transformers lets
save nothing, or a disk that filled) is never marked complete, and is rebuilt if found.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.loader.dtypes import resolve_dtype
from catalog.loader.source import ModelSource, SourceError, resolve_source

CACHE_LAYOUT_VERSION = "1"
COMPLETE_MARKER = "maas-cache.json"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: ModelSource
    weights_dir: Path  # the safetensors directory the weights now come from
    from_cache: bool
    seconds: float


def _as_source(spec: dict | ModelSource) -> ModelSource:
    return spec if isinstance(spec, ModelSource) else resolve_source(spec)


def cache_dir_for(source: ModelSource, cache_root: Path) -> Path:
    import transformers

    key = "\0".join([*source.fingerprint_parts(), transformers.__version__, CACHE_LAYOUT_VERSION])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_root) / f"{source.path.stem[:60]}-{digest}"


def _complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def cached_weights(source: ModelSource, cache_root: Path) -> Path | None:
    """The safetensors directory to load from without conversion, if there is one."""
    if source.format == "safetensors":
        return source.path
    target = cache_dir_for(source, cache_root)
    return target if (target / COMPLETE_MARKER).is_file() and _complete(target) else None


def _apply_chat_template(tokenizer, chat_template: str | None):
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def load_tokenizer(spec: dict | ModelSource, cache_root: Path, *, chat_template: str | None = None):
    from transformers import AutoTokenizer

    source = _as_source(spec)
    weights = cached_weights(source, cache_root)
    if weights is not None:
        tokenizer = AutoTokenizer.from_pretrained(weights, local_files_only=True, trust_remote_code=False)
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            source.directory, gguf_file=source.path.name, local_files_only=True, trust_remote_code=False
        )
    return _apply_chat_template(tokenizer, chat_template)


def load_model(
    spec: dict | ModelSource,
    cache_root: Path,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    chat_template: str | None = None,
) -> LoadedModel:
    """`dtype` may be "auto": the fastest type on this machine (catalog.loader.dtypes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    source = _as_source(spec)
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    weights = cached_weights(source, cache_root)
    common = {"local_files_only": True, "trust_remote_code": False}
    if weights is not None:
        tokenizer = AutoTokenizer.from_pretrained(weights, **common)
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch_dtype, use_safetensors=True, **common)
        from_cache = source.format == "gguf"
    else:
        gguf = {"gguf_file": source.path.name, **common}
        tokenizer = AutoTokenizer.from_pretrained(source.directory, **gguf)
        model = AutoModelForCausalLM.from_pretrained(source.directory, dtype=torch.float32, **gguf)
        _drop_gguf_quantizer(model)
        weights = _write_cache(source, cache_root, model, tokenizer) or source.path
        model = model.to(torch_dtype)
        from_cache = False
    model.to(device)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=_apply_chat_template(tokenizer, chat_template),
        source=source,
        weights_dir=weights,
        from_cache=from_cache,
        seconds=time.perf_counter() - started,
    )


def load_encoder(spec: dict | ModelSource, *, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """An embedding model: the bare encoder (no head) and its tokenizer, from safetensors only
    (GGUF embedding models are not something transformers reads)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    started = time.perf_counter()
    source = _as_source(spec)
    if source.format != "safetensors":
        raise SourceError("An embedding model must come as a safetensors directory")
    common = {"local_files_only": True, "trust_remote_code": False}
    tokenizer = AutoTokenizer.from_pretrained(source.path, **common)
    model = AutoModel.from_pretrained(
        source.path, dtype=getattr(torch, resolve_dtype(dtype, device)), use_safetensors=True, **common
    )
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, source, source.path, False, time.perf_counter() - started)


def _drop_gguf_quantizer(model) -> None:
    """transformers dequantizes GGUF tensors into ordinary float tensors on the CPU but keeps its
    GGUF quantizer attached, which refuses to save. Once every tensor is verified to be a plain
    float tensor, the model is an ordinary model: detach the quantizer so it can be saved."""
    import torch

    not_float = [name for name, t in model.state_dict().items() if not torch.is_floating_point(t)]
    if not_float:
        raise ValueError(f"GGUF tensors were not dequantized: {not_float[:5]}")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _write_cache(source: ModelSource, cache_root: Path, model, tokenizer) -> Path | None:
    """The cache directory, or None when this process could not write a whole one."""
    target = cache_dir_for(source, cache_root)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if not _complete(staging):
            return None
        (staging / COMPLETE_MARKER).write_text(
            json.dumps(
                {
                    "source": str(source.path),
                    "format": source.format,
                    "layout": CACHE_LAYOUT_VERSION,
                }
            )
        )
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished first (or a stale, incomplete directory is in the way).
            if cached_weights(source, cache_root) is None:
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
