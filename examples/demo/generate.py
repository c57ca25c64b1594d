"""Generate the demo's synthetic multi-task instruction data (deterministic; committed output).

Five capabilities with clearly different answer formats and lengths, so that their gradients
differ in scale, which is the imbalance BIDS corrects:
  arithmetic  "What is 37 + 85?"                   -> "122"            (short)
  reverse     "Reverse the string: kqzmt"          -> "tmzqk"          (medium)
  sort        "Sort ascending: 9 3 7 1"            -> "1 3 7 9"        (medium)
  copy        "Repeat exactly: <sentence>"         -> "<sentence>"     (long)
  yesno       "Is 41 greater than 17?"             -> "yes" / "no"     (one word)

Run: python examples/demo/generate.py  (writes train.jsonl and validation/<task>.jsonl here)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = ("arithmetic", "reverse", "sort", "copy", "yesno")
WORDS = (
    "river stone cloud lamp garden window paper silver orange quiet music bridge forest "
    "candle winter harbor meadow planet violet thunder pencil mirror castle ocean"
).split()
SYSTEM = "You are a precise assistant. Answer with the result only."


def make_example(task: str, rng: random.Random) -> dict:
    if task == "arithmetic":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        question, answer = f"What is {a} + {b}?", str(a + b)
    elif task == "reverse":
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
        question, answer = f"Reverse the string: {word}", word[::-1]
    elif task == "sort":
        numbers = [rng.randint(0, 99) for _ in range(rng.randint(3, 7))]
        question = "Sort ascending: " + " ".join(map(str, numbers))
        answer = " ".join(map(str, sorted(numbers)))
    elif task == "copy":
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14)))
        question, answer = f"Repeat exactly: {sentence}", sentence
    elif task == "yesno":
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        question, answer = f"Is {a} greater than {b}?", "yes" if a > b else "no"
    else:
        raise ValueError(task)
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    return {"messages": messages}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def generate(directory: Path = HERE, train_per_task: int = 60, validation_per_task: int = 4, seed: int = 7) -> None:
    rng = random.Random(seed)
    train = []
    for task in TASKS:
        for number in range(train_per_task):
            record = make_example(task, rng)
            record["id"] = f"{task}-{number:04d}"
            train.append(record)
    rng.shuffle(train)
    write_jsonl(directory / "train.jsonl", train)
    for task in TASKS:
        write_jsonl(directory / "validation" / f"{task}.jsonl", [make_example(task, rng) for _ in range(validation_per_task)])


if __name__ == "__main__":
    generate()
