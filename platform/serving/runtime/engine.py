"""The batching engine: one thread owns the model and runs continuous batching.

Between decode steps, waiting requests are prefilled together and joined to the running batch;
finished or cancelled rows leave it. Rows for different adapters and the base model share every
forward pass (`adapter_names` per row). Adapter loading runs on the same thread between steps,
so the model never changes under a forward pass.

Decoding follows the reader: a row whose sink holds MAX_UNREAD events its client has not taken
waits (it stays in the batch, its step masked out) until the client reads again, so a stalled
client stalls only its own row and nothing piles up for it.

Interactive requests go first: waiting ones are taken before batch (Batch API) ones, and while
any interactive request runs or waits, at most `batch_rows_with_interactive` batch rows decode
(default 0: on a CPU each row in a step slows every other's, so batch work takes only idle
capacity), and a full batch makes room for interactive ones. A batch row that makes room leaves
the batch at the next step with everything but its keys and values (its sampler, grammar, text and
tokens so far), and comes back, its keys and values computed again from its prompt and tokens,
when the interactive ones are done; it then goes on where it was, token for token.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from serving.runtime import answers, metrics, runners
from serving.runtime.adapters import BASE, AdapterManager
from serving.runtime.grammars import GrammarLimit, Guide
from serving.runtime.prefix_cache import PrefixCache
from serving.runtime.sampling import Sampler, SamplingParams
from serving.runtime.serve import Loop
from serving.runtime.textstream import TextStream

log = logging.getLogger("serving.runtime")
MAX_UNREAD = 16  # events a row may be ahead of its reader
INTERACTIVE, BATCH = 0, 1  # request priorities: lower goes first
# Interactive calls come in runs (a client's next call, an agent's next turn): batch rows wait
# this long after the last interactive row before they come back, rather than being computed
# again just in time to make room once more.
INTERACTIVE_GRACE_SECONDS = 0.3
IDLE_WAIT_SECONDS = 0.005  # when every row waits for its reader


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    # sink.put(event); events: ("token", delta, n, logprobs) / ("done", reason, usage) / ("error", message, status),
    # logprobs: [(token, logprob, [(token, logprob), ...]), ...] for the tokens of this delta, or None
    sink: object
    adapter: str = BASE
    guide: Guide | None = None  # the grammar constraining the answer
    endpoint: str = "chat"
    priority: int = INTERACTIVE
    cache_namespace: str | None = None  # who may share its prompt's cached prefix (None: not cached)
    cached_tokens: int = 0  # of its prompt, tokens whose keys and values came from the prompt cache
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.perf_counter)
    ended: threading.Event = field(default_factory=threading.Event)  # set with `usage` once it left the engine
    usage: dict | None = None
    finish_reason: str | None = None

    def unread(self) -> int:
        """Events the reader has not taken yet (0 for a sink that does not count them)."""
        return getattr(self.sink, "unread", lambda: 0)()


@dataclass
class _Row:
    request: GenerationRequest
    sampler: Sampler
    text: TextStream
    generated: list[int] = field(default_factory=list)
    first_token_seen: bool = False
    logprobs: list | None = None  # those of tokens whose text has not been sent yet


class Engine(Loop):
    thread_name = "engine"

    def __init__(
        self,
        model,
        tokenizer,
        adapters: AdapterManager,
        *,
        max_batch: int = 32,
        max_model_len: int = 8192,
        batch_rows_with_interactive: int = 0,
        prompt_cache_bytes: int = 0,
        runner=None,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.max_batch = max_batch
        self.batch_rows_with_interactive = batch_rows_with_interactive
        self.prefix_cache = PrefixCache(prompt_cache_bytes) if prompt_cache_bytes > 0 else None
        self._interactive_at = float("-inf")  # when interactive work last ran or waited
        self.max_model_len = max_model_len
        self.eos_ids = self._eos_ids(model, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.runner = runner or runners.build(model, adapters, max_len=max_model_len, pad_id=pad_id)
        adapters.refusal = self.runner.refusal
        # (priority, arrival order, request): interactive first, each class in arrival order
        self.waiting: queue.PriorityQueue[tuple[int, int, GenerationRequest]] = queue.PriorityQueue()
        self._arrivals = itertools.count()
        self.commands: queue.Queue[tuple[Future, callable]] = queue.Queue()
        self.rows: list[_Row] = []
        self.preempted: list[_Row] = []  # batch rows that made room, oldest first
        self.batch = None  # the running rows' keys and values (the runner's batch state), row for row

    @staticmethod
    def _eos_ids(model, tokenizer) -> set[int]:
        ids = set()
        configured = getattr(model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        ids.add(tokenizer.eos_token_id)
        return {i for i in ids if i is not None}

    # --- API used by the HTTP layer (any thread) ----------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        self.waiting.put((request.priority, next(self._arrivals), request))
        metrics.QUEUE_DEPTH.set(self.waiting.qsize())

    def call(self, fn) -> Future:
        """Run fn(engine) on the engine thread between steps (adapter loading and the like)."""
        future: Future = Future()
        self.commands.put((future, fn))
        return future

    def in_use(self) -> set[str]:
        return {row.request.adapter for row in [*self.rows, *self.preempted]}

    # --- The loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            try:
                self._run_commands()
                self._make_room()
                newcomers, resumed = self._take_waiting()
                if newcomers:
                    self._prefill(newcomers)
                if resumed:
                    self._resume(resumed)
                if self.rows:
                    self._decode()
                elif self.preempted and not newcomers:
                    time.sleep(IDLE_WAIT_SECONDS)  # batch rows wait out the interactive grace
                self._count_load()
            except Exception as error:  # keep serving: fail the requests in flight, not the process
                log.exception("engine step failed")
                for row in [*self.rows, *self.preempted]:
                    message = f"The runtime failed while generating: {error}"
                    self._fail(row.request, error, message, len(row.generated))
                self.rows, self.preempted, self.batch = [], [], None

    def _run_commands(self) -> None:
        while True:
            try:
                future, fn = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn(self))
            except Exception as error:
                future.set_exception(error)
            metrics.LOADED_ADAPTERS.set(len(self.adapters.loaded))

    def _count_load(self) -> None:
        """The gauges the pool's scaler reads, after every step (so rows that were cancelled or
        ended count no more): running and waiting requests (preempted rows wait to come back),
        and of everything in the engine, how much is batch work."""
        with self.waiting.mutex:
            waiting_batch = sum(1 for priority, _, _ in self.waiting.queue if priority > INTERACTIVE)
            waiting = len(self.waiting.queue)
        metrics.QUEUE_DEPTH.set(waiting + len(self.preempted))
        metrics.RUNNING.set(len(self.rows))
        running_batch = sum(1 for row in self.rows if row.request.priority > INTERACTIVE)
        metrics.BATCH_REQUESTS.set(waiting_batch + running_batch + len(self.preempted))

    def _interactive_waiting(self) -> int:
        with self.waiting.mutex:
            return sum(1 for priority, _, _ in self.waiting.queue if priority == INTERACTIVE)

    def _batch_rows_allowed(self, interactive: int, *, joining: bool = False) -> int:
        """How many batch rows may decode beside `interactive` rows (running or waiting): all
        there is room for when there are none (for rows `joining` the batch, only once none has
        run for INTERACTIVE_GRACE_SECONDS)."""
        now = time.monotonic()
        if interactive:
            self._interactive_at = now
        elif not joining or now - self._interactive_at > INTERACTIVE_GRACE_SECONDS:
            return self.max_batch
        return min(self.batch_rows_with_interactive, max(0, self.max_batch - interactive))

    def _interactive_rows(self) -> int:
        return sum(1 for row in self.rows if row.request.priority == INTERACTIVE)

    def _make_room(self) -> None:
        """Batch rows beyond what may decode beside interactive work leave the batch (the latest
        started first: they have the least to compute again)."""
        cancelled = [row for row in self.preempted if row.request.cancelled.is_set()]
        for row in cancelled:
            self.preempted.remove(row)
            self._finish(row, "cancelled")
        batch_rows = [i for i, row in enumerate(self.rows) if row.request.priority > INTERACTIVE]
        interactive = self._interactive_waiting() + self._interactive_rows()
        excess = len(batch_rows) - self._batch_rows_allowed(interactive)
        if excess <= 0:
            return
        leaving = batch_rows[-excess:]
        self.preempted += [self.rows[i] for i in leaving]
        self.preempted.sort(key=lambda row: row.request.arrived)
        metrics.PREEMPTED_ROWS.inc(len(leaving))
        self._drop(set(leaving))

    def _next_priority(self) -> int | None:
        """The priority of the request that would be taken next (the heap's first), if any."""
        with self.waiting.mutex:
            return self.waiting.queue[0][0] if self.waiting.queue else None

    def _take_waiting(self) -> tuple[list[GenerationRequest], list[_Row]]:
        """Requests to start and preempted rows to resume, as many as there is room for:
        interactive requests first, then preempted rows, then batch requests, these two only as
        far as batch rows may decode now."""
        taken: list[GenerationRequest] = []
        resumed: list[_Row] = []
        room = self.max_batch - len(self.rows)
        if room <= 0:
            return taken, resumed
        interactive = self._interactive_rows()
        batch_rows = len(self.rows) - interactive
        try:
            if not self.rows and not self.preempted:
                first = self.waiting.get(timeout=0.05)[2]
                taken.append(first)
                interactive += first.priority == INTERACTIVE
                batch_rows += first.priority > INTERACTIVE
            while len(taken) + len(resumed) < room:
                following = self._next_priority()
                if following == INTERACTIVE:
                    taken.append(self.waiting.get_nowait()[2])
                    interactive += 1
                    continue
                # Only batch work is left to take: as much as may decode beside what runs.
                if batch_rows >= self._batch_rows_allowed(interactive, joining=True):
                    break
                if self.preempted:
                    resumed.append(self.preempted.pop(0))
                elif following is not None:
                    taken.append(self.waiting.get_nowait()[2])
                else:
                    break
                batch_rows += 1
        except queue.Empty:
            pass
        live = []
        for request in taken:
            if request.cancelled.is_set():
                self._end(request, "cancelled", 0)
            elif request.adapter != BASE and request.adapter not in self.adapters.loaded:
                self._fail(request, None, f"The adapter {request.adapter!r} is no longer loaded.")
            else:
                self.adapters.touch(request.adapter)
                live.append(request)
        return live, resumed

    def _prefill(self, requests: list[GenerationRequest]) -> None:
        rows = []
        for request in requests:  # a request whose sampling state cannot be built fails alone
            try:
                row = _Row(request, Sampler(request.params), TextStream(self.tokenizer, request.params.stop))
                row.logprobs = [] if request.params.logprobs is not None else None
                rows.append(row)
            except Exception as error:
                self._fail(request, error)
        if not rows:
            return
        requests = [row.request for row in rows]
        # Identical prompts for one adapter (a request's n choices) are computed once, then copied.
        keys = [(tuple(r.prompt_ids), r.adapter, r.cache_namespace) for r in requests]
        distinct = {key: i for i, key in reversed(list(enumerate(keys)))}
        firsts = sorted(set(distinct.values()))
        unique = [requests[i] for i in firsts]
        hits = [self._cached_prefix(request) for request in unique]
        try:
            logits, batch = self.runner.prefill([r.prompt_ids for r in unique], [r.adapter for r in unique], hits)
        except Exception as error:
            # The running batch is untouched until the join below: only the newcomers fail.
            for request in requests:
                self._fail(request, error)
            return
        for i, (request, hit) in enumerate(zip(unique, hits, strict=True)):
            if hit is not None:
                request.cached_tokens = hit.length
                metrics.CACHED_PROMPT_TOKENS.inc(hit.length)
            self._remember(request, batch, i)
        if len(unique) < len(requests):
            copies = [firsts.index(distinct[key]) for key in keys]
            for request, key in zip(requests, keys, strict=True):
                request.cached_tokens = requests[distinct[key]].cached_tokens
            batch.keep(copies)
            logits = logits[torch.tensor(copies)]
        for request in requests:
            metrics.PROMPT_TOKENS.inc(len(request.prompt_ids))
        self._join(batch)
        start = len(self.rows)
        self.rows.extend(rows)
        self._advance(logits, range(start, start + len(rows)))

    def _cached_prefix(self, request: GenerationRequest):
        if self.prefix_cache is None or not request.cache_namespace:
            return None
        return self.prefix_cache.lookup(request.cache_namespace, request.prompt_ids)

    def _remember(self, request: GenerationRequest, batch, row: int) -> None:
        """Keep a prefilled prompt's keys and values in the prompt cache (a longer prompt than its
        cached prefix, as when a chat grew, is kept too)."""
        if self.prefix_cache is None or request.cache_namespace is None:
            return
        keys, values = batch.prefix(row, len(request.prompt_ids))
        self.prefix_cache.store(request.cache_namespace, request.prompt_ids, keys, values)

    def _join(self, batch) -> None:
        if self.batch is None:
            self.batch = batch
        else:
            self.batch.join(batch)

    def _resume(self, rows: list[_Row]) -> None:
        """Preempted rows back into the batch: the keys and values of their prompt and of every
        token but the last computed again (the last goes in at the next decode step, as it would
        have), and nothing sampled here."""
        sequences = [row.request.prompt_ids + row.generated[:-1] for row in rows]
        try:
            _, batch = self.runner.prefill(sequences, [row.request.adapter for row in rows], [None] * len(rows))
        except Exception as error:
            for row in rows:
                self._fail(row.request, error, None, len(row.generated))
            return
        self._join(batch)
        self.rows.extend(rows)

    def _drop(self, finished: set[int]) -> None:
        keep = [i for i in range(len(self.rows)) if i not in finished]
        self.rows = [self.rows[i] for i in keep]
        if self.rows:
            self.batch.keep(keep)
        else:
            self.batch = None

    def _decode(self) -> None:
        cancelled = [i for i, row in enumerate(self.rows) if row.request.cancelled.is_set()]
        if cancelled:  # whether or not they wait for their reader: gone before another forward pass
            for i in cancelled:
                self._finish(self.rows[i], "cancelled")
            self._drop(set(cancelled))
            if not self.rows:
                return
        ready = [row.request.unread() < MAX_UNREAD for row in self.rows]
        if not any(ready):
            time.sleep(IDLE_WAIT_SECONDS)
            return
        # A row waiting for its reader takes part in the step without moving on: its last token
        # goes in again, for real, once its reader has caught up.
        metrics.BATCH_SIZE.observe(sum(ready))
        logits = self.runner.decode(
            self.batch,
            [row.generated[-1] for row in self.rows],
            ready,
            [row.request.adapter for row in self.rows],
        )
        self._advance(logits, [i for i, r in enumerate(ready) if r], offsets=False)

    def _advance(self, logits: torch.Tensor, indices, *, offsets: bool = True) -> None:
        """Sample one token for each of these rows, stream it, and drop the rows that finished.
        With `offsets`, logits row k belongs to the k-th of `indices` (a prefill's newcomers);
        without, logits hold every batch row and row i's are logits[i]."""
        finished = set()
        for offset, i in enumerate(indices):
            row = self.rows[i]
            try:
                done = self._step_row(row, logits[offset if offsets else i])
            except GrammarLimit as limit:  # the caller's schema, not the runtime: a 400, not logged as a fault
                message = f"The answer's schema cannot be followed further: {limit}"
                self._fail(row.request, None, message, len(row.generated), status=400)
                done = True
            except Exception as error:  # sampling or decoding this row failed: end it, keep the others
                message = f"The runtime could not generate this answer: {error}"
                self._fail(row.request, error, message, len(row.generated))
                done = True
            if done:
                finished.add(i)
        if finished:
            self._drop(finished)

    def _step_row(self, row: _Row, logits: torch.Tensor) -> bool:
        request = row.request
        if request.cancelled.is_set():
            return self._finish(row, "cancelled")
        guide, max_tokens = request.guide, request.params.max_tokens
        budget = min(max_tokens, self.max_model_len - len(request.prompt_ids)) - len(row.generated)
        allowed = guide.allowed(logits.shape[-1], budget, max_tokens) if guide is not None else None
        token = row.sampler.choose(logits, row.generated, allowed)
        if guide is not None and token not in self.eos_ids:
            guide.consume(token)
        row.generated.append(token)
        metrics.COMPLETION_TOKENS.inc()
        if not row.first_token_seen:
            row.first_token_seen = True
            metrics.TIME_TO_FIRST_TOKEN.observe(time.perf_counter() - request.arrived)
        if token in self.eos_ids:
            return self._finish(row, "stop")
        if row.logprobs is not None:
            row.logprobs.append(_logprobs(logits, token, request.params.logprobs))
        delta = row.text.add(token)
        if delta:
            request.sink.put(("token", delta, len(row.generated), self._take_logprobs(row)))
        if row.text.stopped or (guide is not None and guide.stopped()):
            return self._finish(row, "stop")
        if (
            len(row.generated) >= request.params.max_tokens
            or len(request.prompt_ids) + len(row.generated) >= self.max_model_len
        ):
            return self._finish(row, "length")
        return False

    @staticmethod
    def _take_logprobs(row: _Row) -> list | None:
        taken = row.logprobs
        if taken is not None:
            row.logprobs = []
        return taken

    def _finish(self, row: _Row, reason: str) -> bool:
        if reason != "cancelled":
            rest = row.text.flush()
            if rest:
                row.request.sink.put(("token", rest, len(row.generated), self._take_logprobs(row)))
        self._end(row.request, reason, len(row.generated))
        return True

    def _end(self, request: GenerationRequest, reason: str, completion: int) -> None:
        """The one way a request leaves the engine with an answer: its usage is the count it really
        generated, kept on the request for whoever asks afterwards (the gateway, after its client left)."""
        metrics.REQUESTS.labels(request.endpoint, reason).inc()
        request.usage, request.finish_reason = self._usage(request, completion), reason
        request.sink.put(("done", reason, request.usage))
        request.ended.set()

    def _fail(
        self,
        request: GenerationRequest,
        error: Exception | None,
        message: str | None = None,
        completion: int = 0,
        status: int = 500,
    ) -> None:
        if error is not None:
            log.exception("request %s failed in the engine", request.id, exc_info=error)
        metrics.REQUESTS.labels(request.endpoint, "error").inc()
        request.usage, request.finish_reason = self._usage(request, completion), "error"
        request.sink.put(("error", message or f"The runtime could not generate this answer: {error}", status))
        request.ended.set()

    @staticmethod
    def _usage(request: GenerationRequest, completion: int) -> dict:
        cached = request.cached_tokens if request.cache_namespace is not None else None
        return answers.usage(len(request.prompt_ids), completion, cached)


def _logprobs(logits: torch.Tensor, token: int, top: int) -> tuple:
    """The model's log-probability of the chosen token and of its `top` most likely ones (before
    sampling parameters or a grammar shaped the choice)."""
    logprobs = torch.log_softmax(logits.to(torch.float32), dim=-1)
    best = torch.topk(logprobs, top) if top else None
    alternatives = list(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else []
    return token, float(logprobs[token]), alternatives
