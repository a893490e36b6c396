"""Turning generated token ids into text deltas, honouring stop strings.

Text that could still turn out to be the beginning of a stop string is held back, so a streamed
response never shows part of a stop sequence; an incomplete UTF-8 character is held back too.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out
        self.stopped = False
        self.text = ""

    def add(self, token_id: int) -> str:
        """Add one token; return the text that may be shown now."""
        self.ids.append(token_id)
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if full.endswith("\ufffd"):
            return ""
        self.text = full
        if self.stop:
            window = max(0, self.emitted - max(map(len, self.stop)))
            hits = [i for i in (full.find(s, window) for s in self.stop) if i >= 0]
            if hits:
                self.stopped = True
                self.text = full[: min(hits)]
                return self._emit(len(self.text))
            return self._emit(len(full) - self._held_back(full))
        return self._emit(len(full))

    def flush(self) -> str:
        """At the end (length, end of sequence): hand out whatever was held back."""
        return self._emit(len(self.text))

    def _held_back(self, full: str) -> int:
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(full)), 0, -1):
                if full.endswith(stop[:size]):
                    longest = max(longest, size)
                    break
        return longest

    def _emit(self, end: int) -> str:
        end = max(end, self.emitted)
        delta, self.emitted = self.text[self.emitted : end], end
        return delta
