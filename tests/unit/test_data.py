"""JSONL loading errors name file and line; templating labels assistant tokens only."""

from __future__ import annotations

import json

import pytest

from selection import data
from selection.models import PLAIN_CHAT_TEMPLATE, build_byte_tokenizer


def line(messages, **extra) -> str:
    return json.dumps({"messages": messages, **extra})


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "and 3+3?"},
    {"role": "assistant", "content": "6"},
]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (line(CHAT) + "\n{not json\n", "train.jsonl line 2: not valid JSON"),
        (line(CHAT) + "\n\n", "train.jsonl line 2: not valid JSON"),
        ('[1, 2]\n', "train.jsonl line 1: expected a JSON object"),
        (line([{"role": "robot", "content": "x"}]), "train.jsonl line 1: messages[0].role: expected one of"),
        (line([{"role": "user", "content": 3}]), "train.jsonl line 1: messages[0].content: expected a string"),
        (line([{"role": "user", "content": "hi"}]), "train.jsonl line 1: no assistant message"),
        (json.dumps({"prompt": "x"}), "train.jsonl line 1: 'messages' must be a non-empty list"),
        ("", "train.jsonl: no examples"),
    ],
)
def test_malformed_lines_are_named(text, message):
    with pytest.raises(data.DataError) as caught:
        data.parse_jsonl(text, "train.jsonl")
    assert message in str(caught.value)


def test_validation_tasks_come_from_file_or_line():
    text = line(CHAT, task="math") + "\n" + line(CHAT, task="math") + "\n"
    assert {e.task for e in data.parse_jsonl(text, "v.jsonl", require_task=True)} == {"math"}
    assert {e.task for e in data.parse_jsonl(line(CHAT) + "\n", "v.jsonl", task="math")} == {"math"}
    with pytest.raises(data.DataError, match="v.jsonl line 2: unknown task 'code'"):
        data.parse_jsonl(line(CHAT, task="math") + "\n" + line(CHAT, task="code"), "v.jsonl", task="math")
    with pytest.raises(data.DataError, match="v.jsonl line 1: no 'task' field"):
        data.parse_jsonl(line(CHAT), "v.jsonl", require_task=True)


def test_invalid_utf8_names_the_line():
    with pytest.raises(data.DataError, match="t.jsonl line 2: not valid UTF-8"):
        data.decode(b'{"a": 1}\n{"b": "\xff"}\n', "t.jsonl")


def test_only_assistant_contents_are_labelled():
    tokenizer = build_byte_tokenizer()
    example = data.parse_jsonl(line(CHAT), "t.jsonl")[0]
    tokenized = data.tokenize_example(tokenizer, example, template=PLAIN_CHAT_TEMPLATE, max_length=4096)
    full = tokenizer.apply_chat_template(list(example.messages), chat_template=PLAIN_CHAT_TEMPLATE, tokenize=False)
    # the pieces concatenate to exactly the rendered conversation
    assert tokenizer.decode(list(tokenized.input_ids)) == full
    labelled = [t for t, label in zip(tokenized.input_ids, tokenized.labels) if label != data.IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "4<|endoftext|>6<|endoftext|>"


def test_truncation_keeps_the_left_and_may_leave_no_label():
    tokenizer = build_byte_tokenizer()
    example = data.parse_jsonl(line(CHAT), "t.jsonl")[0]
    short = data.tokenize_example(tokenizer, example, template=PLAIN_CHAT_TEMPLATE, max_length=10)
    assert len(short.input_ids) == 10 and short.trained_tokens == 0


def test_collate_pads_right_and_masks_padding():
    batch = data.collate([data.Tokenized((1, 2, 3), (-100, 2, 3)), data.Tokenized((4,), (4,))], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
