"""JSONL chat data: loading with errors that name file and line, templating, assistant-only labels.

An example's loss is the mean token cross-entropy over assistant tokens only (docs/algorithms.md §2).
Conversations are rendered turn by turn with the chat template, and each rendered piece is
tokenized on its own, so the assistant spans are known exactly instead of guessed from offsets.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from selection import storage

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One JSONL line: its messages, its task (validation only) and the raw text for output."""

    line: int  # 0-based line number: the example's index in the selection result
    messages: tuple[dict[str, str], ...]
    task: str | None
    raw: str


@dataclass(frozen=True)
class Tokenized:
    """Token ids and labels (IGNORE_INDEX outside assistant turns) of one example."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _check_messages(value: Any, where: str) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    messages = []
    for position, message in enumerate(value):
        field = f"{where}: messages[{position}]"
        if not isinstance(message, dict):
            raise DataError(f"{field}: expected an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(f"{field}.role: expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise DataError(f"{field}.content: expected a string")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message, so the example has no loss")
    return tuple(messages)


def parse_jsonl(
    text: str, source: str, *, task: str | None = None, require_task: bool = False
) -> list[Example]:
    """Parse chat-format JSONL. Blank lines are errors: they would shift every later index."""
    examples = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    for number, raw in enumerate(lines):
        where = f"{source} line {number + 1}"
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object")
        messages = _check_messages(record.get("messages"), where)
        line_task = record.get("task")
        if line_task is not None and not isinstance(line_task, str):
            raise DataError(f"{where}: 'task' must be a string")
        if task is not None and line_task is not None and line_task != task:
            raise DataError(
                f"{where}: unknown task '{line_task}': this file is declared as task '{task}'"
            )
        resolved = task if task is not None else line_task
        if require_task and not resolved:
            raise DataError(
                f"{where}: no 'task' field, and the spec gives this validation file no task"
            )
        examples.append(Example(number, messages, resolved, raw))
    if not examples:
        raise DataError(f"{source}: no examples")
    return examples


def read_uri(uri: str, base_dir: str | Path | None = None, s3: Any = None) -> bytes:
    """Bytes of a local path (relative to `base_dir`) or an s3:// object."""
    if uri.startswith("s3://"):
        parent, name = posixpath.split(uri.rstrip("/"))
        store = storage.open_store(
            parent,
            endpoint_url=getattr(s3, "endpoint", None),
            region=getattr(s3, "region", None),
        )
        return store.get_bytes(name)
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"{uri}: cannot read ({error.strerror or error})") from None


def decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{source} line {line}: not valid UTF-8") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _render(tokenizer, messages: Sequence[dict[str, str]], template: str, generation: bool) -> str:
    if not messages and not generation:
        return ""
    return tokenizer.apply_chat_template(
        list(messages),
        chat_template=template,
        tokenize=False,
        add_generation_prompt=generation,
    )


def chat_template_for(tokenizer, choice: str) -> str:
    """The Jinja template to use: the tokenizer's own ('auto' when it has one) or the plain one."""
    from selection.models import PLAIN_CHAT_TEMPLATE  # deferred: models pulls in the contract and pydantic

    own = getattr(tokenizer, "chat_template", None)
    if choice == "auto" and isinstance(own, str) and own:
        return own
    return PLAIN_CHAT_TEMPLATE


def tokenize_example(tokenizer, example: Example, *, template: str, max_length: int) -> Tokenized:
    """Render turn by turn; assistant contents are labelled, everything else is masked."""
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""

    def append(piece: str, trained: bool) -> None:
        if not piece:
            return
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids.extend(piece_ids)
        labels.extend(piece_ids if trained else [IGNORE_INDEX] * len(piece_ids))

    messages = example.messages
    for turn, message in enumerate(messages):
        if message["role"] == "assistant":
            opened = _render(tokenizer, messages[:turn], template, generation=True)
            closed = _render(tokenizer, messages[: turn + 1], template, generation=False)
            if not opened.startswith(rendered) or not closed.startswith(opened):
                raise DataError(
                    f"line {example.line + 1}: the chat template does not render conversations "
                    "prefix by prefix, so assistant tokens cannot be located; use chatTemplate: plain"
                )
            append(opened[len(rendered):], trained=False)
            append(closed[len(opened):], trained=True)
        else:
            closed = _render(tokenizer, messages[: turn + 1], template, generation=False)
            if not closed.startswith(rendered):
                raise DataError(
                    f"line {example.line + 1}: the chat template does not render conversations "
                    "prefix by prefix; use chatTemplate: plain"
                )
            append(closed[len(rendered):], trained=False)
        rendered = closed
    return Tokenized(tuple(ids[:max_length]), tuple(labels[:max_length]))


def collate(batch: Sequence[Tokenized], pad_token_id: int):
    """Right-padded tensors: input_ids, attention_mask, labels (padding labelled IGNORE_INDEX)."""
    import torch  # deferred: `dsel validate` and the jobs' start parse data without torch

    width = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(batch):
        length = len(item.input_ids)
        input_ids[row, :length] = torch.tensor(item.input_ids)
        attention[row, :length] = 1
        labels[row, :length] = torch.tensor(item.labels)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
