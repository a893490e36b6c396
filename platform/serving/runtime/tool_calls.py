"""Tools in the prompt, and tool calls out of the generated text.

A chat template that knows tools (it mentions `tools`) renders them and the conversation's calls
and results itself. Otherwise (SmolLM2's template, say) this is the documented fallback: the
tools are described in the system message, in the same <tool_call> format the grammar makes the
model write (serving.runtime.grammars); an assistant's earlier calls are written back in that
format, and a tool's result is a `tool` turn (or, for a template that knows only the usual
roles, a user turn inside <tool_response> tags).

`CallParser` reads the generated text as it streams: content, or calls whose arguments arrive in
fragments that concatenate to the whole arguments.
"""

from __future__ import annotations

import json
import secrets

from serving.protocol.structured import Constraint

# A call, as the grammar makes the model write it (one block per call, a newline between blocks):
#   <tool_call>
#   {"name": "get_weather", "arguments": {"city": "Paris"}}
#   </tool_call>
CALL_TAG = "<tool_call>"  # text that begins with it is a call
CALL_OPEN = CALL_TAG + '\n{"name": "'
CALL_MID = '", "arguments": '
CALL_CLOSE = "}\n</tool_call>"
CALL_SEPARATOR = "\n"

FALLBACK_INSTRUCTIONS = (
    "You can call functions to help answer. These are the functions, one JSON definition a line, "
    "between <tools> and </tools>:\n<tools>\n{tools}\n</tools>\n\n"
    "To call a function, answer with a JSON object of its name and its arguments between "
    "<tool_call> and </tool_call>, one block per call:\n"
    '<tool_call>\n{{"name": "the function\'s name", "arguments": {{...}}}}\n</tool_call>'
)


def template_knows_tools(tokenizer) -> bool:
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def _call_block(call: dict) -> str:
    function = call["function"]
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        arguments = function["arguments"]
    return CALL_OPEN + function["name"] + CALL_MID + json.dumps(arguments) + CALL_CLOSE


def renders_tool_turns(tokenizer) -> bool:
    """Whether the template writes a `tool` turn as it is (templates that render any role do):
    a model then reads a result as a result, where inside a user turn it tends to repeat its call."""
    known = getattr(tokenizer, "_maas_renders_tool_turns", None)
    if known is None:
        marker = "tool-result-7f3a"
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "q"}, {"role": "tool", "content": marker}], tokenize=False
            )
            known = marker in text and "tool" in text.replace(marker, "")
        except Exception:  # a template that refuses other roles
            known = False
        tokenizer._maas_renders_tool_turns = known
    return known


def fallback_conversation(conversation: list[dict], constraint: Constraint | None, tool_turns: bool) -> list[dict]:
    """The conversation in turns the template knows, with the tools described: a tool's result is a
    `tool` turn where the template renders one (`tool_turns`), else a user turn in <tool_response>."""
    turns = []
    for message in conversation:
        if message["role"] == "tool" and tool_turns:
            turns.append({"role": "tool", "content": message["content"] or ""})
        elif message["role"] == "tool":
            turns.append({"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"})
        elif message.get("tool_calls"):
            blocks = CALL_SEPARATOR.join(_call_block(call) for call in message["tool_calls"])
            content = f"{message['content']}\n{blocks}" if message.get("content") else blocks
            turns.append({"role": "assistant", "content": content})
        else:
            turns.append({"role": message["role"], "content": message["content"] or ""})
    if constraint is not None and constraint.kind == "tools":
        tools = "\n".join(json.dumps(f.as_tool()) for f in constraint.functions)
        instructions = FALLBACK_INSTRUCTIONS.format(tools=tools)
        if turns and turns[0]["role"] == "system":
            turns[0] = {"role": "system", "content": f"{turns[0]['content']}\n\n{instructions}"}
        else:
            turns.insert(0, {"role": "system", "content": instructions})
    return turns


def template_conversation(conversation: list[dict]) -> list[dict]:
    """The conversation as templates that know tools expect it: arguments as objects."""
    turns = []
    for message in conversation:
        message = {key: value for key, value in message.items() if value is not None}
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                try:
                    arguments = json.loads(call["function"]["arguments"])
                except ValueError:
                    arguments = call["function"]["arguments"]
                calls.append({**call, "function": {"name": call["function"]["name"], "arguments": arguments}})
            message["tool_calls"] = calls
            message.setdefault("content", "")
        turns.append(message)
    return turns


def prompt_ids(tokenizer, conversation: list[dict], constraint: Constraint | None) -> list[int]:
    tools = None
    if constraint is not None and constraint.kind == "tools":
        tools = [f.as_tool() for f in constraint.functions]
    options = {"add_generation_prompt": True, "tokenize": True, "return_dict": False}
    if template_knows_tools(tokenizer):
        return tokenizer.apply_chat_template(template_conversation(conversation), tools=tools, **options)
    turns = fallback_conversation(conversation, constraint, renders_tool_turns(tokenizer))
    return tokenizer.apply_chat_template(turns, **options)


def call_id() -> str:
    return "call_" + secrets.token_urlsafe(18)


class CallParser:
    """Generated text in, answer pieces out: ("content", text), ("call", index, id, name) when a
    call's name is known, ("arguments", index, fragment) as its arguments arrive."""

    def __init__(self, required: bool):
        self.mode = "call" if required else "start"
        self.buffer = ""
        self.calls: list[dict] = []  # {"id", "name", "arguments"} as parsed so far
        self.content = ""

    def feed(self, text: str) -> list[tuple]:
        self.buffer += text
        pieces: list[tuple] = []
        while True:
            piece = self._step()
            if piece is None:
                return pieces
            if piece != ():
                pieces.append(piece)

    def _step(self):
        """One piece out of the buffer, () for progress without a piece, None when it needs more."""
        if self.mode == "start":  # a call, or text: known once the text begins a call or cannot
            if CALL_TAG.startswith(self.buffer):
                return None
            self.mode = "call" if self.buffer.startswith(CALL_TAG) else "content"
            return ()
        if self.mode == "content":
            if not self.buffer:
                return None
            text, self.buffer = self.buffer, ""
            self.content += text
            return ("content", text)
        if self.mode == "call":
            opening = (CALL_SEPARATOR if self.calls else "") + CALL_OPEN
            if len(self.buffer) < len(opening):
                return None
            self.buffer, self.mode = self.buffer[len(opening) :], "name"
            return ()
        if self.mode == "name":
            end = self.buffer.find(CALL_MID)
            if end < 0:
                return None
            name, self.buffer, self.mode = self.buffer[:end], self.buffer[end + len(CALL_MID) :], "arguments"
            self.calls.append({"id": call_id(), "name": name, "arguments": ""})
            return ("call", len(self.calls) - 1, self.calls[-1]["id"], name)
        # arguments: everything up to the closing of the block, holding back what may begin it
        end = self.buffer.find(CALL_CLOSE)
        if end >= 0:
            fragment, self.buffer, self.mode = self.buffer[:end], self.buffer[end + len(CALL_CLOSE) :], "call"
        else:
            keep = next(
                (
                    n
                    for n in range(min(len(CALL_CLOSE) - 1, len(self.buffer)), 0, -1)
                    if self.buffer.endswith(CALL_CLOSE[:n])
                ),
                0,
            )
            fragment = self.buffer[: len(self.buffer) - keep]
            self.buffer = self.buffer[len(fragment) :]
            if not fragment:
                return None
        self.calls[-1]["arguments"] += fragment
        return ("arguments", len(self.calls) - 1, fragment) if fragment else ()

    def finish(self) -> list[tuple]:
        """What is left when generation ended (cut short mid-call: the arguments so far)."""
        pieces = []
        if self.buffer and self.mode in ("start", "content"):
            pieces.append(("content", self.buffer))
            self.content += self.buffer
        elif self.buffer and self.mode == "arguments":
            self.calls[-1]["arguments"] += self.buffer
            pieces.append(("arguments", len(self.calls) - 1, self.buffer))
        self.buffer = ""
        return pieces


def fallback_template(template: str, tool_turns: bool) -> str:
    """A chat template for an engine that renders templates itself (vLLM) and a model whose
    template does not know tools: the same fallback as `fallback_conversation`, written in Jinja
    before the model's own template, so both engines show the model the same prompt."""
    instructions_before, instructions_after = FALLBACK_INSTRUCTIONS.split("{tools}")
    result = (
        "{'role': 'tool', 'content': m.content}"
        if tool_turns
        else "{'role': 'user', 'content': '<tool_response>\\n' ~ m.content ~ '\\n</tool_response>'}"
    )
    opening, middle, closing = (json.dumps(x)[1:-1].replace("'", "\\'") for x in (CALL_OPEN, CALL_MID, CALL_CLOSE))
    prefix = (
        "{%- set ns = namespace(turns=[], tools='') -%}\n"
        "{%- for m in messages -%}\n"
        "  {%- if m.role == 'tool' -%}{%- set ns.turns = ns.turns + [" + result + "] -%}\n"
        "  {%- elif m.tool_calls -%}\n"
        "    {%- set calls = namespace(text='') -%}\n"
        "    {%- for call in m.tool_calls -%}\n"
        "      {%- set a = call.function.arguments -%}\n"
        "      {%- set a = a if a is string else a | tojson -%}\n"
        "      {%- set calls.text = calls.text ~ ('\\n' if loop.index0 else '') ~ '"
        + opening
        + "' ~ call.function.name"
        " ~ '" + middle + "' ~ a ~ '" + closing + "' -%}\n"
        "    {%- endfor -%}\n"
        "    {%- set text = (m.content ~ '\\n' ~ calls.text) if m.content else calls.text -%}\n"
        "    {%- set ns.turns = ns.turns + [{'role': 'assistant', 'content': text}] -%}\n"
        "  {%- else -%}{%- set ns.turns = ns.turns + [{'role': m.role, 'content': m.content or ''}] -%}\n"
        "  {%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if tools -%}\n"
        "  {%- for t in tools -%}{%- set ns.tools = ns.tools ~ ('\\n' if loop.index0 else '') ~ (t | tojson) -%}"
        "{%- endfor -%}\n"
        "  {%- set described = "
        + json.dumps(instructions_before.replace("{{", "{").replace("}}", "}"))
        + " ~ ns.tools ~ "
        + json.dumps(instructions_after.replace("{{", "{").replace("}}", "}"))
        + " -%}\n"
        "  {%- if ns.turns and ns.turns[0].role == 'system' -%}\n"
        "    {%- set ns.turns = [{'role': 'system', 'content': ns.turns[0].content ~ '\\n\\n' ~ described}]"
        " + ns.turns[1:] -%}\n"
        "  {%- else -%}{%- set ns.turns = [{'role': 'system', 'content': described}] + ns.turns -%}\n"
        "  {%- endif -%}\n"
        "{%- endif -%}\n"
        "{%- set messages = ns.turns -%}\n"
    )
    return prefix + template
