"""What an answer must look like: `response_format` (JSON, or JSON of a schema) and function
`tools` with `tool_choice`, parsed and checked before any engine sees them.

A JSON schema is checked against the JSON Schema 2020-12 meta-schema (a 400 names the path inside
it) and bounded by what it costs to compile, not by the depth a legitimate schema needs:
MAX_SCHEMA_CHARS serialized, MAX_SCHEMA_DEPTH levels, MAX_ENUM values in one enum, MAX_TOOLS
tools. Whether an engine can compile it into a grammar is the engine's to say (also a 400).

`Constraint` is the engine-neutral result: what the runtime turns into a grammar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import ConfigDict, Field, WithJsonSchema

from serving.protocol.base import Strict
from serving.protocol.errors import ProtocolError

MAX_TOOLS = 128
MAX_SCHEMA_CHARS = 100_000
MAX_SCHEMA_DEPTH = 64
MAX_ENUM = 2_000
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

JSON_SCHEMA_DOC = {"type": "object", "description": "A JSON Schema (2020-12).", "additionalProperties": True}
JSON_SCHEMA_OR_NULL = {"anyOf": [JSON_SCHEMA_DOC, {"type": "null"}]}


def _depth(value, limit: int) -> int:
    """How deep a JSON value nests, counted only as far as `limit` + 1 (a hostile schema is not
    walked to its end)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > limit:
            return level
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _largest_enum(value) -> int:
    largest, stack = 0, [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("enum"), list):
                largest = max(largest, len(node["enum"]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return largest


def check_schema(schema, param: str) -> dict:
    """A JSON schema a grammar can be built from, or a ProtocolError naming where it is wrong."""
    if not isinstance(schema, dict):
        raise ProtocolError(f"Invalid '{param}': a JSON schema must be an object.", param)
    if len(orjson.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise ProtocolError(
            f"Invalid '{param}': the schema is larger than {MAX_SCHEMA_CHARS} characters.", param, "schema_too_large"
        )
    if _depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise ProtocolError(
            f"Invalid '{param}': the schema nests deeper than {MAX_SCHEMA_DEPTH} levels.", param, "schema_too_large"
        )
    if _largest_enum(schema) > MAX_ENUM:
        raise ProtocolError(
            f"Invalid '{param}': an enum of the schema has more than {MAX_ENUM} values.", param, "schema_too_large"
        )
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = ".".join([param, *(str(part) for part in error.path)])
        raise ProtocolError(f"Invalid '{where}': {error.message}", where) from None
    return schema


class JsonSchemaFormat(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, WithJsonSchema(JSON_SCHEMA_OR_NULL)] = Field(None, alias="schema")
    strict: bool | None = None


def _format_rules(schema: dict) -> None:
    """What `response_format_constraint` checks: json_schema comes with, and only with, its type."""
    schema["anyOf"] = [
        {"properties": {"type": {"enum": ["text", "json_object"]}}, "not": {"required": ["json_schema"]}},
        {"properties": {"type": {"enum": ["json_schema"]}}, "required": ["json_schema"]},
    ]


class ResponseFormat(Strict):
    model_config = ConfigDict(json_schema_extra=_format_rules)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: Annotated[dict[str, Any] | None, WithJsonSchema(JSON_SCHEMA_OR_NULL)] = None
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Strict):
    name: str


class NamedTool(Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedTool
FunctionCallChoice = Literal["none", "auto"] | NamedFunction


def unique_names(functions):
    """A validator's check: tools (or legacy functions) named once each."""
    names = [getattr(f, "function", f).name for f in functions or ()]
    if len(set(names)) != len(names):
        raise ValueError("function names must be unique")
    return functions


NO_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Function:
    name: str
    description: str | None
    parameters: dict

    def as_tool(self) -> dict:
        function = {"name": self.name}  # in the order clients send a tool
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": {**function, "parameters": self.parameters}}


@dataclass(frozen=True)
class Constraint:
    """What the output must be. `json`: a JSON value of `schema` (None: any JSON object).
    `tools`: calls to `functions` (only `forced` when named), possibly several with `parallel`;
    `required` false lets the model answer in text instead."""

    kind: Literal["json", "tools"]
    schema: dict | None = None
    functions: tuple[Function, ...] = ()
    required: bool = False
    parallel: bool = True
    legacy: bool = False  # asked with `functions`: answered with `function_call`
    named: bool = False  # one function forced by name: finished "stop", as OpenAI's (and vLLM's) are


def response_format_constraint(response_format: ResponseFormat | None, param: str = "response_format"):
    if response_format is None or response_format.type == "text":
        if response_format is not None and response_format.json_schema is not None:
            raise ProtocolError(f"'{param}.json_schema' is only allowed with type json_schema.", f"{param}.json_schema")
        return None
    if response_format.type == "json_object":
        return Constraint("json", {"type": "object"})
    if response_format.json_schema is None:
        raise ProtocolError(
            f"Missing required parameter: '{param}.json_schema'.", f"{param}.json_schema", "missing_required_parameter"
        )
    schema = response_format.json_schema.schema_
    if schema is None:  # OpenAI's default: any JSON object
        return Constraint("json", {"type": "object"})
    return Constraint("json", check_schema(schema, f"{param}.json_schema.schema"))


def functions_of(tools, param: str) -> tuple[Function, ...]:
    functions = []
    for i, tool in enumerate(tools):
        definition = getattr(tool, "function", tool)
        parameters = definition.parameters if definition.parameters is not None else NO_PARAMETERS
        where = f"{param}.{i}.function.parameters" if hasattr(tool, "function") else f"{param}.{i}.parameters"
        check_schema(parameters, where)
        functions.append(Function(definition.name, definition.description, parameters))
    return tuple(functions)


def _given(field: str) -> dict:
    """The field is there and not null (said by its types: the document is OpenAPI 3.0, which
    has no null type). Tool lists are arrays; choices are a word or an object."""
    value = (
        {"type": "array"} if field in ("tools", "functions") else {"anyOf": [{"type": "string"}, {"type": "object"}]}
    )
    return {"required": [field], "properties": {field: value}}


def a_choice_needs_tools(tools: str, choice: str) -> dict:
    """tools_constraint's rule as a schema: a choice other than none or auto needs tools."""
    return {
        "anyOf": [
            {"not": _given(choice)},
            {"properties": {choice: {"enum": ["none", "auto"]}}},
            {"required": [tools], "properties": {tools: {"type": "array", "minItems": 1}}},
        ]
    }


def choice_rules(*pairs: tuple[str, str], exclusive: tuple[tuple[str, ...], tuple[str, ...]] | None = None):
    """A request's json_schema_extra stating its tool rules: each (tools, choice) pair's, and with
    `exclusive`, that fields of the one group and of the other are not both given."""

    def extra(schema: dict) -> None:
        rules = [a_choice_needs_tools(tools, choice) for tools, choice in pairs]
        if exclusive is not None:
            one, other = ({"anyOf": [_given(f) for f in group]} for group in exclusive)
            rules.append({"not": {"allOf": [one, other]}})
        schema.setdefault("allOf", []).extend(rules)

    return extra


def tools_constraint(functions: tuple[Function, ...], choice, parallel: bool | None, param: str, legacy=False):
    """The constraint of `tools` + `tool_choice` (or the legacy `functions` + `function_call`)."""
    name = None
    if isinstance(choice, NamedTool):
        name = choice.function.name
    elif isinstance(choice, NamedFunction):
        name = choice.name
    if not functions:
        if choice not in (None, "none", "auto"):
            raise ProtocolError(f"'{param}' needs tools to choose from.", param)
        return None
    if choice == "none":
        return None
    if name is not None:
        chosen = tuple(f for f in functions if f.name == name)
        if not chosen:
            raise ProtocolError(f"Invalid '{param}': no tool is named {name!r}.", param)
        return Constraint("tools", functions=chosen, required=True, parallel=False, legacy=legacy, named=True)
    return Constraint(
        "tools",
        functions=functions,
        required=choice == "required",
        # One call per answer unless parallel calls are asked for: a small model left free to go on
        # repeats its call until max_tokens.
        parallel=not legacy and parallel is True,
        legacy=legacy,
    )
