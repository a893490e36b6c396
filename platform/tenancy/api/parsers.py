"""JSON request bodies with bounded nesting, for the management API and the DRF views under /v1/.

Python's json module recurses once per nesting level and raises RecursionError, not a parse
error, on a body like `[[[[…]]]]`: DRF's own parser let that through as a 500. orjson refuses
such input with a parse error, and no real request nests deeper than MAX_DEPTH."""

from __future__ import annotations

import orjson
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 32


def nests_within(value, limit: int) -> bool:
    """Whether value nests no deeper than limit levels of objects and arrays (iterative)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level > limit:
                return False
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = orjson.loads(stream.read())
        except orjson.JSONDecodeError as error:
            raise ParseError(f"The body is not valid JSON: {error}") from None
        if not nests_within(data, MAX_DEPTH):
            raise ParseError(f"The JSON body nests deeper than {MAX_DEPTH} levels.")
        return data
