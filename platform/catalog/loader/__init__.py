"""Loading a model and its tokenizer from a source spec, with no Django and nothing of the app,
so that the runtime and the trainer can use it as standalone processes on a GPU host.

Public surface: `ModelSource`, `SourceError`, `resolve_source`, `load_tokenizer`, `load_model`, `load_encoder`,
`LoadedModel`, `resolve_dtype`.
"""

from catalog.loader.dtypes import resolve_dtype
from catalog.loader.load import LoadedModel, load_encoder, load_model, load_tokenizer
from catalog.loader.source import ModelSource, SourceError, resolve_source

__all__ = [
    "LoadedModel",
    "ModelSource",
    "SourceError",
    "load_encoder",
    "load_model",
    "load_tokenizer",
    "resolve_dtype",
    "resolve_source",
]
