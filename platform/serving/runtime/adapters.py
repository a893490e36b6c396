"""LoRA adapters: loading from the artifact store only, safetensors only, at most N at once.

The base model is wrapped in a PeftModel when the first adapter arrives. Requests never switch a
model-global active adapter: every forward pass names each row's adapter (`adapter_names`), so
one batch serves several adapters and the base model together.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from serving.runtime import lora_batching

BASE = "__base__"
FORBIDDEN_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


class AdapterError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class AdapterManager:
    def __init__(self, base_model, root: Path | None, max_loaded: int):
        self.base_model = base_model
        self.root = root.resolve() if root else None
        self.max_loaded = max_loaded
        self.peft_model = None
        self.loaded: OrderedDict[str, Path] = OrderedDict()  # least recently used first
        self.stacks = lora_batching.Stacks()
        # Why the model runner cannot serve an adapter just loaded (None: it can); set by the engine.
        self.refusal: Callable[[str], str | None] = lambda name: None

    @property
    def model(self):
        return self.peft_model if self.peft_model is not None else self.base_model

    def confine(self, path: str) -> Path:
        if self.root is None:
            raise AdapterError(403, "Adapter loading is disabled: the runtime was started without --adapter-root.")
        candidate = Path(path)
        resolved = (candidate if candidate.is_absolute() else self.root / candidate).resolve()
        if not resolved.is_relative_to(self.root):
            raise AdapterError(403, f"Adapter path {path!r} is outside the artifact store.")
        if not (resolved / "adapter_config.json").is_file() or not (resolved / "adapter_model.safetensors").is_file():
            raise AdapterError(
                400, f"{path!r} is not a LoRA adapter (adapter_config.json + adapter_model.safetensors)."
            )
        unsafe = sorted(p.name for p in resolved.iterdir() if p.suffix in FORBIDDEN_SUFFIXES)
        if unsafe:
            raise AdapterError(
                400, f"Refusing adapter {path!r}: pickled weights are never loaded ({', '.join(unsafe)})."
            )
        return resolved

    def load(self, name: str, path: str, in_use: set[str]) -> bool:
        """Load (or refresh the recency of) an adapter. Returns False if it was loaded already."""
        if not name or name == BASE or "/" in name:
            raise AdapterError(400, f"Invalid adapter name {name!r}.")
        location = self.confine(path)
        if name in self.loaded:
            if self.loaded[name] != location:
                raise AdapterError(400, f"An adapter named {name!r} is loaded from another path; unload it first.")
            self.loaded.move_to_end(name)
            return False
        self._make_room(in_use)
        from peft import PeftModel

        if self.peft_model is None:
            self.peft_model = PeftModel.from_pretrained(
                self.base_model, location, adapter_name=name, is_trainable=False
            )
            self.peft_model.eval()
        else:
            self.peft_model.load_adapter(location, adapter_name=name, is_trainable=False)
        self.loaded[name] = location
        lora_batching.install(self.peft_model, self.stacks)
        self.stacks.bump()
        reason = self.refusal(name)
        if reason is not None:
            self._delete(name)
            raise AdapterError(400, reason)
        return True

    def unload(self, name: str, in_use: set[str]) -> None:
        if name not in self.loaded:
            raise AdapterError(404, f"The adapter {name!r} is not loaded.")
        if name in in_use:
            raise AdapterError(409, f"The adapter {name!r} is serving requests; try again when they finish.")
        self._delete(name)

    def touch(self, name: str) -> None:
        if name in self.loaded:
            self.loaded.move_to_end(name)

    def _make_room(self, in_use: set[str]) -> None:
        while len(self.loaded) >= self.max_loaded:
            victim = next((n for n in self.loaded if n not in in_use), None)
            if victim is None:
                raise AdapterError(503, f"All {self.max_loaded} adapter slots serve running requests; retry shortly.")
            self._delete(victim)

    def _delete(self, name: str) -> None:
        del self.loaded[name]
        if not self.loaded:
            # PEFT keeps naming a deleted adapter as active when it was the last one, and the next
            # forward fails on it: with none left, take the LoRA layers out and serve the base.
            self.base_model = self.peft_model.unload()
            self.peft_model = None
        else:
            self.peft_model.delete_adapter(name)
        self.stacks.bump()
