"""POST /v1/embeddings: `input` as a string, a list of strings, a list of token ids or a list of
such lists (the model's own token ids, without the special tokens it adds itself);
`encoding_format` float or base64 (little-endian float32, what the official SDK asks for by
default); `dimensions` where the model allows it."""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from serving.protocol.errors import ProtocolError, from_validation

MAX_INPUTS = 2048  # OpenAI's bound on inputs per request
MAX_INPUT_CHARS = 200_000  # one input; the model's own token bound comes later, on its count
TokenIds = list[StrictInt]


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: StrictStr = Field(min_length=1, max_length=256)
    input: Annotated[
        StrictStr | list[StrictStr] | TokenIds | list[TokenIds],
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_CHARS},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_INPUTS,
                        "items": {"type": "string", "minLength": 1},
                    },
                    {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_INPUTS,
                        "items": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                    },
                ]
            }
        ),
    ]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, ge=1, le=65536)
    user: StrictStr | None = Field(default=None, max_length=256)

    @field_validator("input", mode="before")
    @classmethod
    def _shape(cls, value):
        # One clear complaint instead of pydantic's four (one per member of the union).
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not value:
            raise ValueError("must be a non-empty string, list of strings, list of token ids, or list of such lists")
        if len(value) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request, got {len(value)}")
        kinds = {_kind(item) for item in value}
        if len(kinds) != 1 or None in kinds:
            index = next(i for i, item in enumerate(value) if _kind(item) != _kind(value[0]) or _kind(item) is None)
            raise ValueError(f"item {index} is not like the first: use only strings, or only token ids, or only lists")
        return value

    def items(self) -> list[str] | list[list[int]]:
        """The inputs, each one string or one list of token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if isinstance(self.input[0], int):
            return [list(self.input)]
        return list(self.input)

    def place(self, index: int) -> tuple[str, str]:
        """Item `index` as a message names it (`input[2]`) and as the error's param (`input.2`);
        plain `input` when the request has one input."""
        if isinstance(self.input, str) or isinstance(self.input[0], int):
            return "input", "input"
        return f"input[{index}]", f"input.{index}"

    def forward(self, model: str) -> dict:
        """What is sent to the model server: only what was parsed, under the server's model name."""
        body = {"model": model, "input": self.input, "encoding_format": self.encoding_format}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body


def _kind(item) -> str | None:
    if isinstance(item, str):
        return "text"
    if isinstance(item, int) and not isinstance(item, bool):
        return "id"
    if isinstance(item, list) and item and all(isinstance(i, int) and not isinstance(i, bool) for i in item):
        return "ids"
    return None


def parse(body: dict) -> EmbeddingsRequest:
    try:
        request = EmbeddingsRequest.model_validate(body)
    except ValidationError as error:
        raise from_validation(error) from None
    for index, item in enumerate(request.items()):
        where, param = request.place(index)
        if isinstance(item, str):
            if not item:
                raise ProtocolError(f"Invalid '{where}': an empty string has no embedding.", param)
            if len(item) > MAX_INPUT_CHARS:
                raise ProtocolError(f"Invalid '{where}': at most {MAX_INPUT_CHARS} characters.", param)
        elif any(token < 0 for token in item):
            raise ProtocolError(f"Invalid '{where}': token ids are not negative.", param)
    return request


def encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def answer(model: str, vectors: list[list[float]], encoding_format: str, prompt_tokens: int) -> dict:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v, encoding_format)} for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
