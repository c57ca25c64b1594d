"""Hostile JSONL lines get one clear error naming file and line; tokenization work is bounded."""

from __future__ import annotations

import json
import logging

import pytest

from selection import data
from selection.models import PLAIN_CHAT_TEMPLATE, build_byte_tokenizer


def line(messages) -> str:
    return json.dumps({"messages": messages})


ANSWER = {"role": "assistant", "content": "ok"}


@pytest.mark.parametrize(("text", "message"), [
    (line([{"role": "user", "content": "a\ud800b"}, ANSWER]),
     "train.jsonl line 1: messages[0].content: character 1 is a lone UTF-16 surrogate (\\ud800)"),
    (line([ANSWER, {"role": "user", "content": "q"}, ANSWER]),
     "train.jsonl line 1: messages[0].role: the conversation opens with an assistant turn"),
    (line([{"role": "system", "content": "s"}, ANSWER]),
     "train.jsonl line 1: messages[1].role: the conversation opens with an assistant turn"),
    ('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "train.jsonl line 1: JSON nested too deeply"),
])
def test_hostile_lines_are_named(text, message):
    with pytest.raises(data.DataError) as caught:
        data.parse_jsonl(text, "train.jsonl")
    assert str(caught.value).startswith(message)


def test_template_that_raises_becomes_a_data_error():
    tokenizer = build_byte_tokenizer()
    strict = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system turn comes first') }}{% endif %}x"
    example = data.parse_jsonl(line([{"role": "user", "content": "q"}, ANSWER]), "t.jsonl")[0]
    with pytest.raises(data.DataError, match=r"^line 1: the chat template refuses this conversation \(a system turn"):
        data.tokenize_example(tokenizer, example, template=strict, max_length=64)


def _unbounded(tokenizer, example, max_length):
    """The reference: tokenize every rendered piece whole, then truncate."""
    ids, labels, rendered = [], [], ""
    for turn, message in enumerate(example.messages):
        generation = message["role"] == "assistant"
        pieces = []
        if generation:
            opened = tokenizer.apply_chat_template(list(example.messages[:turn]), chat_template=PLAIN_CHAT_TEMPLATE,
                                                   tokenize=False, add_generation_prompt=True)
            pieces.append((opened[len(rendered):], False))
            rendered = opened
        closed = tokenizer.apply_chat_template(list(example.messages[: turn + 1]), chat_template=PLAIN_CHAT_TEMPLATE,
                                               tokenize=False, add_generation_prompt=False)
        pieces.append((closed[len(rendered):], generation))
        rendered = closed
        for piece, trained in pieces:
            piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            ids += piece_ids
            labels += piece_ids if trained else [data.IGNORE_INDEX] * len(piece_ids)
    return ids[:max_length], labels[:max_length]


class CountingTokenizer:
    """The byte tokenizer, counting the characters it is asked to tokenize."""

    def __init__(self):
        self.inner = build_byte_tokenizer()
        self.characters = 0

    def __call__(self, text, **kwargs):
        self.characters += len(text)
        return self.inner(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_huge_line_costs_what_max_length_allows():
    huge = "x" * 5_000_000
    example = data.parse_jsonl(
        line([{"role": "user", "content": huge}, {"role": "assistant", "content": huge}]), "t.jsonl"
    )[0]
    tokenizer = CountingTokenizer()
    result = data.tokenize_example(tokenizer, example, template=PLAIN_CHAT_TEMPLATE, max_length=256)
    assert len(result.input_ids) == 256
    assert tokenizer.characters < 50_000  # not 10 MB


@pytest.mark.parametrize("max_length", [8, 12, 40, 2048])
def test_bounded_tokenization_equals_tokenizing_in_full(max_length):
    tokenizer = build_byte_tokenizer()
    conversation = [
        {"role": "system", "content": "Be brief. " * 30},
        {"role": "user", "content": "2+2? " * 50},
        {"role": "assistant", "content": "4 " * 40},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    example = data.parse_jsonl(line(conversation), "t.jsonl")[0]
    result = data.tokenize_example(tokenizer, example, template=PLAIN_CHAT_TEMPLATE, max_length=max_length)
    assert (list(result.input_ids), list(result.labels)) == _unbounded(tokenizer, example, max_length)


def test_answers_truncated_away_are_counted_and_named(caplog):
    tokenizer = build_byte_tokenizer()
    text = "\n".join([
        line([{"role": "user", "content": "short"}, ANSWER]),
        line([{"role": "user", "content": "long " * 100}, ANSWER]),
        line([{"role": "user", "content": "short"}, ANSWER]),
        line([{"role": "user", "content": "long " * 100}, ANSWER]),
    ])
    examples = data.parse_jsonl(text, "train.jsonl")
    tokenized = [data.tokenize_example(tokenizer, e, template=PLAIN_CHAT_TEMPLATE, max_length=64) for e in examples]
    with caplog.at_level(logging.WARNING, logger="dsel.data"):
        lines = data.lines_without_answer(examples, tokenized, "train.jsonl", 64)
    assert lines == [1, 3]
    assert "train.jsonl: 2 example(s) keep no assistant token within maxLength 64" in caplog.text
    assert "line(s) 2, 4" in caplog.text
