"""POST /v1/responses, stateless, served as a chat completion (serving.protocol.responses says what
is accepted): the same route, limits, budgets and metering (ledger route `responses`), with the
chat answer turned into a Response object, or the chat stream into the `response.*` events."""

from __future__ import annotations

import contextlib
import time

import orjson

from serving.gateway import inference
from serving.gateway.http import GatewayError, authenticate, gateway_view
from serving.protocol import ProtocolError
from serving.protocol import responses as protocol
from tenancy.roles import Scope

PASSED_ON = ("x-ratelimit-", "x-request-id")


@gateway_view("POST")
async def create_response(request):
    principal = await authenticate(request, Scope.INFERENCE)
    body = inference.request_body(request)
    try:
        parsed = protocol.parse(body)
    except ProtocolError as problem:
        raise GatewayError(400, problem.message, param=problem.param, code=problem.code) from None
    chat = parsed.to_chat()
    if parsed.stream:
        chat["stream_options"] = {"include_usage": True}
    answer = await inference.serve_generation(
        request, principal, chat, inference.CHAT, "/v1/chat/completions", metered_as="responses"
    )
    if answer.status_code != 200:
        return answer  # an OpenAI error, as the chat path wrote it
    response_id, message_id = protocol.new_ids()
    if parsed.stream:
        result = inference.RelayResponse(
            _events(answer.relay, parsed, response_id, message_id), content_type="text/event-stream"
        )
        result["Cache-Control"] = "no-cache"
        result["X-Accel-Buffering"] = "no"
    else:
        completion = orjson.loads(answer.content)
        choice = completion["choices"][0]
        result = inference.json_response(
            protocol.response_object(
                parsed,
                response_id,
                created=completion.get("created"),
                output=protocol.output_of(choice["message"], message_id),
                usage=protocol.usage_of(completion["usage"]),
                finish_reason=choice.get("finish_reason"),
            )
        )
    for name, value in answer.items():
        if name.lower().startswith(PASSED_ON):
            result[name] = value
    return result


def _event(kind: str, sequence: list, **fields) -> bytes:
    sequence[0] += 1
    payload = {"type": kind, "sequence_number": sequence[0], **fields}
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class _Output:
    """The Response's output items as the chat stream makes them: a message when text comes, a
    function call item per tool call, each opened and closed with its events."""

    def __init__(self, message_id: str, sequence: list):
        self.message_id, self.sequence = message_id, sequence
        self.items: list[dict] = []  # in output order
        self.text: list[str] = []
        self.message_at: int | None = None
        self.calls: dict[int, int] = {}  # the chat tool call's index -> its output index

    def event(self, kind: str, **fields) -> bytes:
        return _event(kind, self.sequence, **fields)

    def text_delta(self, piece: str):
        if self.message_at is None:
            self.message_at = len(self.items)
            self.items.append(protocol.message_item(self.message_id, "", "in_progress"))
            yield self.event("response.output_item.added", output_index=self.message_at, item=self.items[-1])
            yield self.event("response.content_part.added", part=self._part(""), **self._where())
        if piece:
            self.text.append(piece)
            yield self.event("response.output_text.delta", delta=piece, logprobs=[], **self._where())

    def call_delta(self, call: dict):
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self.calls:
            self.calls[index] = len(self.items)
            item = protocol.function_call_item(call.get("id") or "", function.get("name") or "", "", "in_progress")
            self.items.append(item)
            yield self.event("response.output_item.added", output_index=self.calls[index], item=item)
        at = self.calls[index]
        fragment = function.get("arguments") or ""
        if fragment:
            self.items[at]["arguments"] += fragment
            yield self.event(
                "response.function_call_arguments.delta", item_id=self.items[at]["id"], output_index=at, delta=fragment
            )

    def close(self):
        for at, item in enumerate(self.items):
            if at == self.message_at:
                whole = "".join(self.text)
                yield self.event("response.output_text.done", text=whole, logprobs=[], **self._where())
                yield self.event("response.content_part.done", part=self._part(whole), **self._where())
                self.items[at] = protocol.message_item(self.message_id, whole)
            else:
                yield self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=at,
                    name=item["name"],
                    arguments=item["arguments"],
                )
                item["status"] = "completed"
            yield self.event("response.output_item.done", output_index=at, item=self.items[at])

    def _part(self, text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": []}

    def _where(self) -> dict:
        return {"item_id": self.message_id, "output_index": self.message_at, "content_index": 0}


async def _events(chat_stream, parsed: protocol.ResponsesRequest, response_id: str, message_id: str):
    """The chat relay's chunks as the Responses API's event sequence. Closing this closes the
    relay, which closes the books (a client that leaves is billed what was generated)."""
    created, sequence, finish, usage = int(time.time()), [-1], None, None
    output = _Output(message_id, sequence)

    def response(status: str, **extra) -> dict:
        items = output.items if status != "in_progress" else []
        return protocol.response_object(
            parsed, response_id, created=created, status=status, output=items, finish_reason=finish, **extra
        )

    async with contextlib.aclosing(chat_stream):
        yield _event("response.created", sequence, response=response("in_progress"))
        yield _event("response.in_progress", sequence, response=response("in_progress"))
        async for raw in chat_stream:
            data = raw.removeprefix(b"data: ").strip()
            if data == b"[DONE]":
                break
            chunk = orjson.loads(data)
            if "error" in chunk:
                error = chunk["error"]
                yield _event("error", sequence, code=error.get("code"), message=error.get("message"), param=None)
                failed = {"code": error.get("code") or "server_error", "message": error.get("message") or ""}
                yield _event("response.failed", sequence, response=response("failed", error=failed))
                return
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    for event in output.text_delta(delta["content"]):
                        yield event
                for call in delta.get("tool_calls") or ():
                    for event in output.call_delta(call):
                        yield event
                finish = choice.get("finish_reason") or finish
        else:
            return  # the relay ended without [DONE]: it has sent its error event already
        if not output.items:  # an empty answer is still a message
            for event in output.text_delta(""):
                yield event
        for event in output.close():
            yield event
        final = response("completed", usage=protocol.usage_of(usage or {}))
        yield _event(f"response.{final['status']}", sequence, response=final)
