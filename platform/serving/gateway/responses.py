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
        text = choice["message"]["content"] or ""
        result = inference.json_response(
            protocol.response_object(
                parsed,
                response_id,
                created=completion.get("created"),
                output=[protocol.message_item(message_id, text)],
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


async def _events(chat_stream, parsed: protocol.ResponsesRequest, response_id: str, message_id: str):
    """The chat relay's chunks as the Responses API's event sequence. Closing this closes the
    relay, which closes the books (a client that leaves is billed what was generated)."""
    created, sequence, text, finish, usage = int(time.time()), [-1], [], None, None

    def response(status: str, **extra) -> dict:
        output = [protocol.message_item(message_id, "".join(text))] if status != "in_progress" else []
        return protocol.response_object(
            parsed, response_id, created=created, status=status, output=output, finish_reason=finish, **extra
        )

    where = {"item_id": message_id, "output_index": 0, "content_index": 0}
    async with contextlib.aclosing(chat_stream):
        yield _event("response.created", sequence, response=response("in_progress"))
        yield _event("response.in_progress", sequence, response=response("in_progress"))
        yield _event(
            "response.output_item.added",
            sequence,
            output_index=0,
            item=protocol.message_item(message_id, "", "in_progress"),
        )
        part = {"type": "output_text", "text": "", "annotations": []}
        yield _event("response.content_part.added", sequence, part=part, **where)
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
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    text.append(piece)
                    yield _event("response.output_text.delta", sequence, delta=piece, logprobs=[], **where)
                finish = choice.get("finish_reason") or finish
        else:
            return  # the relay ended without [DONE]: it has sent its error event already
        whole = "".join(text)
        yield _event("response.output_text.done", sequence, text=whole, logprobs=[], **where)
        yield _event("response.content_part.done", sequence, part={**part, "text": whole}, **where)
        yield _event(
            "response.output_item.done", sequence, output_index=0, item=protocol.message_item(message_id, whole)
        )
        final = response("completed", usage=protocol.usage_of(usage or {}))
        yield _event(f"response.{final['status']}", sequence, response=final)
