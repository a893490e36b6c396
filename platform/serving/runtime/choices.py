"""One choice of an answer as the engine generates it: its text read as content or tool calls, and
its tokens' log-probabilities, in OpenAI's shapes, streamed (a delta per piece) or whole."""

from __future__ import annotations

from serving.runtime.tool_calls import CallParser


class Choice:
    def __init__(self, index: int, *, chat: bool, tools_required: bool | None, token_bytes, named: bool = False):
        """`tools_required`: None without tools, else whether the model must call one; `named`: the
        call was forced by name (its answer finishes "stop", as OpenAI's do)."""
        self.index, self.chat, self.named = index, chat, named
        self.parser = CallParser(tools_required) if tools_required is not None else None
        self.token_bytes = token_bytes
        self.text: list[str] = []
        self.logprobs: list | None = None  # every token's entry, for the whole answer
        self.pending: list = []  # entries not sent with a delta yet
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.offset = 0  # characters of text so far (completions' text_offset)

    # --- reading engine events -----------------------------------------------------------------

    def token(self, delta: str, completion: int, logprobs: list | None) -> list[dict]:
        """The stream deltas this text makes (chat: delta objects; completions: {"text": ...})."""
        self.completion_tokens = completion
        if logprobs is not None:
            self.logprobs = (self.logprobs or []) + logprobs
            self.pending += logprobs
        self.text.append(delta)
        if self.parser is None:
            return [{"content": delta}] if self.chat else [{"text": delta}]
        return [self._delta(piece) for piece in self.parser.feed(delta)]

    def done(self, reason: str, completion: int) -> list[dict]:
        self.completion_tokens = completion
        rest = [self._delta(piece) for piece in self.parser.finish()] if self.parser is not None else []
        called = reason == "stop" and self.parser and self.parser.calls and not self.named
        self.finish_reason = "tool_calls" if called else reason
        return rest

    @staticmethod
    def _delta(piece: tuple) -> dict:
        if piece[0] == "content":
            return {"content": piece[1]}
        if piece[0] == "call":
            _, index, call_id, name = piece
            call = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
            return {"tool_calls": [call]}
        _, index, fragment = piece
        return {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}

    # --- log-probabilities -----------------------------------------------------------------------

    def take_logprobs(self):
        """The logprobs of the tokens not yet sent, in the shape of this endpoint (None if not asked)."""
        if self.logprobs is None:
            return None
        taken, self.pending = self.pending, []
        return self._shape(taken)

    def _entry(self, token: int, logprob: float) -> dict:
        raw = self.token_bytes(token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    def _shape(self, entries: list) -> dict:
        if self.chat:
            content = [
                {**self._entry(token, logprob), "top_logprobs": [self._entry(t, lp) for t, lp in top]}
                for token, logprob, top in entries
            ]
            return {"content": content, "refusal": None}
        shaped = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, logprob, top in entries:
            text = self._entry(token, logprob)["token"]
            shaped["tokens"].append(text)
            shaped["token_logprobs"].append(logprob)
            shaped["top_logprobs"].append({self._entry(t, lp)["token"]: lp for t, lp in top})
            shaped["text_offset"].append(self.offset)
            self.offset += len(text)
        return shaped

    # --- the whole answer ------------------------------------------------------------------------

    def whole(self) -> dict:
        text = "".join(self.text)
        logprobs = self._shape(self.logprobs) if self.logprobs is not None else None
        if not self.chat:
            return {"index": self.index, "text": text, "logprobs": logprobs, "finish_reason": self.finish_reason}
        message = {"role": "assistant", "content": text, "refusal": None}
        if self.parser is not None:
            message["content"] = self.parser.content or None
            if self.parser.calls:
                message["tool_calls"] = [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in self.parser.calls
                ]
            elif message["content"] is None:
                message["content"] = ""
        return {"index": self.index, "message": message, "logprobs": logprobs, "finish_reason": self.finish_reason}
