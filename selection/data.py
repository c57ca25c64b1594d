"""JSONL chat data: loading with errors that name file and line, templating, assistant-only labels.

An example's loss is the mean token cross-entropy over assistant tokens only (docs/algorithms.md §2).
Conversations are rendered turn by turn with the chat template, and each rendered piece is
tokenized on its own, so the assistant spans are known exactly instead of guessed from offsets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from selection import storage

log = logging.getLogger("dsel.data")

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
        _check_encodable(content, f"{field}.content")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message, so the example has no loss")
    first = next(position for position, m in enumerate(messages) if m["role"] != "system")
    if messages[first]["role"] == "assistant":
        raise DataError(
            f"{where}: messages[{first}].role: the conversation opens with an assistant turn; "
            "an answer needs a user turn before it"
        )
    return tuple(messages)


def _check_encodable(text: str, field: str) -> None:
    """JSON allows lone surrogates ("\\ud800"); UTF-8 and every tokenizer do not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(
            f"{field}: character {error.start} is a lone UTF-16 surrogate "
            f"(\\u{ord(text[error.start]):04x}), which is not text"
        ) from None


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
        except RecursionError:
            raise DataError(f"{where}: JSON nested too deeply to be a chat example") from None
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


def _render(tokenizer, messages: Sequence[dict[str, str]], template: str, generation: bool, line: int) -> str:
    if not messages and not generation:
        return ""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            list(messages),
            chat_template=template,
            tokenize=False,
            add_generation_prompt=generation,
        )
    except TemplateError as error:
        raise DataError(
            f"line {line + 1}: the chat template refuses this conversation ({error}); "
            "fix the conversation or use chatTemplate: plain"
        ) from None


# Characters per token bound slack: a piece is cut this many tokens' worth past what can still
# fit, so the cut never changes the tokens that are kept (BPE merges do not reach that far).
_CUT_SLACK_TOKENS = 16


def _longest_token_chars(tokenizer) -> int:
    """The most characters one token can cover: bounds the text worth tokenizing."""
    cached = getattr(tokenizer, "_dsel_longest_token", None)
    if cached is None:
        cached = max((len(token) for token in tokenizer.get_vocab()), default=1)
        try:
            tokenizer._dsel_longest_token = cached
        except AttributeError:
            pass
    return max(1, cached)


def chat_template_for(tokenizer, choice: str) -> str:
    """The Jinja template to use: the tokenizer's own ('auto' when it has one) or the plain one."""
    from selection.models import PLAIN_CHAT_TEMPLATE  # deferred: models pulls in the contract and pydantic

    own = getattr(tokenizer, "chat_template", None)
    if choice == "auto" and isinstance(own, str) and own:
        return own
    return PLAIN_CHAT_TEMPLATE


def tokenize_example(tokenizer, example: Example, *, template: str, max_length: int) -> Tokenized:
    """Render turn by turn; assistant contents are labelled, everything else is masked.

    Work per example is bounded by `max_length`: once it is reached later turns are not
    tokenized, and a piece is cut to what can still fit (plus slack) before tokenizing, so a
    5 MB line costs as much as a `max_length` one.
    """
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    per_token = _longest_token_chars(tokenizer)

    def append(piece: str, trained: bool) -> None:
        if not piece:
            return
        room = max_length - len(ids)
        piece = piece[: (room + _CUT_SLACK_TOKENS) * per_token]
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"][:room]
        ids.extend(piece_ids)
        labels.extend(piece_ids if trained else [IGNORE_INDEX] * len(piece_ids))

    messages = example.messages
    line = example.line
    for turn, message in enumerate(messages):
        if len(ids) >= max_length:
            break  # everything later is truncated away
        if message["role"] == "assistant":
            opened = _render(tokenizer, messages[:turn], template, True, line)
            closed = _render(tokenizer, messages[: turn + 1], template, False, line)
            if not opened.startswith(rendered) or not closed.startswith(opened):
                raise DataError(
                    f"line {line + 1}: the chat template does not render conversations "
                    "prefix by prefix, so assistant tokens cannot be located; use chatTemplate: plain"
                )
            append(opened[len(rendered):], trained=False)
            append(closed[len(opened):], trained=True)
        else:
            closed = _render(tokenizer, messages[: turn + 1], template, False, line)
            if not closed.startswith(rendered):
                raise DataError(
                    f"line {line + 1}: the chat template does not render conversations "
                    "prefix by prefix; use chatTemplate: plain"
                )
            append(closed[len(rendered):], trained=False)
        rendered = closed
    return Tokenized(tuple(ids), tuple(labels))


def lines_without_answer(
    examples: Sequence[Example], tokenized: Sequence[Tokenized], source: str, max_length: int
) -> list[int]:
    """0-based lines whose assistant tokens maxLength truncated away, with a warning naming them.

    Such an example has no loss, so its gradient features (and scores) would be made up; the
    selection excludes these lines (docs/refusals.md).
    """
    lines = [e.line for e, t in zip(examples, tokenized) if t.trained_tokens == 0]
    if lines:
        shown = ", ".join(str(line + 1) for line in lines[:20]) + (", ..." if len(lines) > 20 else "")
        log.warning(
            "%s: %d example(s) keep no assistant token within maxLength %d and are excluded from "
            "the selection: line(s) %s", source, len(lines), max_length, shown,
        )
    return lines


def duplicate_lines(examples: Sequence[Example], source: str) -> list[int]:
    """0-based lines whose messages repeat an earlier line's exactly, with a warning naming them.

    A repeated example has the same gradient and score as its first copy, so a score-ranked
    method would spend two budget slots on one example (docs/algorithms.md §18.5).
    """
    first: dict[tuple[tuple[tuple[str, str], ...], ...], int] = {}
    lines: list[int] = []
    for e in examples:
        key = tuple(tuple(sorted(m.items())) for m in e.messages)
        if key in first:
            lines.append(e.line)
        else:
            first[key] = e.line
    if lines:
        shown = ", ".join(str(line + 1) for line in lines[:20]) + (", ..." if len(lines) > 20 else "")
        log.warning(
            "%s: %d example(s) repeat an earlier line exactly and are left out of the selection "
            "(selection.deduplicate): line(s) %s", source, len(lines), shown,
        )
    return lines


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
