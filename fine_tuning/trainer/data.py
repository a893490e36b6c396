"""Turning examples into training batches: the model's chat template, loss on assistant tokens
only, and a step's examples side by side in one row that never attends across examples."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fine_tuning.datafile import BadLine, as_chat, parse_line, read_lines

IGNORE = -100
MAX_LINE_BYTES = 64 << 20  # the upload limit of a line is lower; this only bounds memory


@dataclass
class Encoded:
    input_ids: list[int]
    trainable: list[bool]  # whether the token at this position is learned (an assistant token)

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(tokenizer, conversation: list[dict], max_len: int) -> Encoded:
    """Tokens of the rendered conversation; assistant replies (and their end-of-turn token) are
    trainable unless the message has weight 0. Relies on the template rendering each prefix of
    the conversation as a prefix of the whole, which holds for chat templates in practice and is
    checked here."""
    plain = [{"role": m["role"], "content": m["content"]} for m in conversation]
    ids = list(tokenizer.apply_chat_template(plain, tokenize=True, return_dict=False))
    trainable = [False] * len(ids)
    for k, message in enumerate(conversation):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = (
            tokenizer.apply_chat_template(plain[:k], tokenize=True, add_generation_prompt=True, return_dict=False)
            if k
            else []
        )
        through = tokenizer.apply_chat_template(plain[: k + 1], tokenize=True, return_dict=False)
        if list(through[: len(before)]) != list(before) or list(ids[: len(through)]) != list(through):
            raise ValueError("the chat template does not render conversations prefix by prefix")
        for position in range(len(before), len(through)):
            trainable[position] = True
    return Encoded(ids[:max_len], trainable[:max_len])


class ExampleError(ValueError):
    """An example the trainer cannot use; the message names the file's line and the reason."""


def read_examples(path: str, tokenizer, max_len: int, *, label: str = "training") -> list[Encoded]:
    """The file's examples, read exactly as the upload validator read them (datafile.read_lines and
    parse_line: the same bytes, the same line breaks, the same decoding)."""
    examples = []
    with open(path, "rb") as handle:
        for number, raw in read_lines(handle, MAX_LINE_BYTES):
            try:
                if raw is None:
                    raise BadLine("line_too_long", "the line is too long")
                example = parse_line(number, raw)
                if example is None:
                    continue
                encoded = encode(tokenizer, as_chat(example), max_len)
            except Exception as error:
                # Files are validated at upload, so this means the file or the base model's template
                # changed since: say which example, not just the exception.
                reason = error.message if isinstance(error, BadLine) else f"{type(error).__name__}: {error}"
                raise ExampleError(f"{label} file, line {number}: {reason}") from error
            if any(encoded.trainable):
                examples.append(encoded)
    return examples


def pack(examples: list[Encoded], order: list[int], max_len: int) -> list[list[int]]:
    """Greedy packing in the given order: each bin is a list of example indices whose lengths
    sum to at most max_len."""
    bins: list[list[int]] = []
    used = 0
    for index in order:
        size = len(examples[index])
        if bins and used + size <= max_len:
            bins[-1].append(index)
            used += size
        else:
            bins.append([index])
            used = size
    return bins


def epoch_steps(count: int, epoch: int, seed: int, batch_size: int) -> list[list[int]]:
    """One epoch's optimizer steps, each the indices of its examples. `batch_size` counts examples,
    as OpenAI's does: the examples are shuffled (reproducibly per epoch) and cut into batches of
    batch_size, so steps per epoch = ceil(examples / batch_size), however many processes share a
    step (data-parallel training splits each step's examples, trainer/distributed.py)."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(count, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, count, batch_size)]


AUTO_VALIDATION_MIN_EXAMPLES = 100


def split_validation(examples: list[Encoded], seed: int) -> tuple[list[Encoded], list[Encoded]]:
    """The automatic validation split, for a job without a validation file: from 100 examples on,
    10 % of them (at least 10, at most 1,000), drawn reproducibly from the seed, are held out to
    measure the model before and after training. Smaller datasets keep every example for training."""
    if len(examples) < AUTO_VALIDATION_MIN_EXAMPLES:
        return examples, []
    held = max(10, min(1000, len(examples) // 10))
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = set(order[:held])
    return [e for i, e in enumerate(examples) if i not in chosen], [examples[i] for i in order[:held]]


def steps_per_epoch(examples: int, batch_size: int) -> int:
    return math.ceil(examples / batch_size)


@dataclass
class Batch:
    """Examples side by side in one row, without padding: the model computes real tokens only, and
    each example attends to itself alone (trainer/attention.py reads `segments`)."""

    input_ids: torch.Tensor  # [1, T]
    targets: torch.Tensor  # [1, T]: the next token to predict at each position, or IGNORE
    position_ids: torch.Tensor  # [1, T]: restarting at every example
    segments: list[tuple[int, int]]  # each example's [start, end) in the row
    tokens: int  # T

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "segments": self.segments}


def collate(examples: list[Encoded], members: list[int]) -> Batch:
    ids: list[int] = []
    targets: list[int] = []
    positions: list[int] = []
    segments = []
    for index in members:
        example = examples[index]
        n = len(example)
        segments.append((len(ids), len(ids) + n))
        ids += example.input_ids
        positions += range(n)
        # Position t predicts token t+1 of the same example, when that token is trainable.
        targets += [example.input_ids[t + 1] if example.trainable[t + 1] else IGNORE for t in range(n - 1)]
        targets.append(IGNORE)
    return Batch(torch.tensor([ids]), torch.tensor([targets]), torch.tensor([positions]), segments, len(ids))
