"""The /v1/embeddings request as the protocol module parses it (gateway and runtime alike): every
form OpenAI accepts, and a 400 naming the parameter for everything else."""

from __future__ import annotations

import base64
import struct

import pytest

from serving.protocol import ProtocolError
from serving.protocol import embeddings as protocol


@pytest.mark.parametrize(
    ("given", "items"),
    [
        ("a cat", ["a cat"]),
        (["a cat", "a car"], ["a cat", "a car"]),
        ([101, 7], [[101, 7]]),
        ([[101, 7], [9]], [[101, 7], [9]]),
    ],
)
def test_every_input_form_is_a_list_of_items(given, items):
    parsed = protocol.parse({"model": "m", "input": given})
    assert parsed.items() == items
    assert parsed.encoding_format == "float"
    assert parsed.forward("upstream-name") == {"model": "upstream-name", "input": given, "encoding_format": "float"}


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "m"}, "input", "Missing required parameter"),
        ({"model": "m", "input": []}, "input", "non-empty"),
        ({"model": "m", "input": ["a", 3]}, "input", "item 1 is not like the first"),
        ({"model": "m", "input": [[1], []]}, "input", "item 1 is not like the first"),
        ({"model": "m", "input": [True]}, "input", "item 0"),
        ({"model": "m", "input": ["a", ""]}, "input.1", "empty string"),
        ({"model": "m", "input": [[1, -2]]}, "input.0", "not negative"),
        ({"model": "m", "input": ["x"] * 2049}, "input", "at most 2048 inputs"),
        ({"model": "m", "input": "a", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
        ({"model": "m", "input": "a", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
        ({"model": "m", "input": "a", "dimensions": "8"}, "dimensions", "integer"),
        ({"model": "m", "input": "a", "truncate": True}, "truncate", "Unrecognized request argument"),
    ],
)
def test_a_bad_request_names_its_parameter(body, param, fragment):
    with pytest.raises(ProtocolError) as refused:
        protocol.parse(body)
    assert refused.value.param == param
    assert fragment in refused.value.message


def test_base64_is_little_endian_float32_as_the_sdk_decodes_it():
    vector = [0.5, -1.25, 3.0]
    encoded = protocol.encode(vector, "base64")
    assert list(struct.unpack("<3f", base64.b64decode(encoded))) == vector
    answer = protocol.answer("m", [vector], "float", 4)
    assert answer["data"] == [{"object": "embedding", "index": 0, "embedding": vector}]
    assert answer["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
