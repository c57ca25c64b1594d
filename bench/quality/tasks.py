"""Synthetic capabilities with exact-match answers and deliberately unequal influence.

Six tasks whose per-example gradients differ in answer length, loss scale and difficulty (what
makes the influence of one task intrinsically larger than another's, the bias BIDS corrects):

  task       prompt (user turn)              answer        answer tokens  base model (pretrained)
  successor  "after 389 comes"               "390"         1-4            learns it well
  larger     "of 41 and 17 the larger is"    "41"          2              learns it well
  parity     "4718 is"                       "even"/"odd"  3-4, 2 values  hardly (near chance)
  count      "bcaab has ? a:"                "2"           1              hardly
  lookup     "q=41 b=73 x=15; b is"          "73"          2              partly
  sort       "5 2 8 1 in order is"           "1 2 5 8"     5-11           partly

plus `chatter`, a distractor ("Tell me about the river." answered by random words): it cannot
be learned and teaches no capability; it only has large, noisy gradients.

The base model is pretrained on "narrative" lines, the prompt followed by the answer and a full
stop ("after 389 comes 390."), mixed with chatter text; it never sees the chat template.
Instruction tuning (LoRA on chat examples) has to teach it to answer inside the template and to
stop, task by task, and sharpens the skills themselves. (Prompts phrased as instructions
unrelated to the pretraining text, "What number comes after 389?", did not transfer at all in a
few hundred LoRA steps with a model this small; see README.md.)

The tokenizer is byte-level, so one character is one token.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

TASKS: tuple[str, ...] = ("successor", "larger", "parity", "count", "lookup", "sort")
DISTRACTOR = "chatter"
WORDS = (
    "river stone cloud lamp garden window paper silver orange quiet music bridge forest "
    "candle winter harbor meadow planet violet thunder pencil mirror castle ocean"
).split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Item:
    """One instance of a task: the prompt, the exact answer and the narrative line."""

    task: str
    question: str
    answer: str
    kind: str = "on-target"  # transfer pools (transfer.py): on-target, off-target, wrong, flipped

    @property
    def narrative(self) -> str:
        """The pretraining form: prompt, answer, full stop ("after 389 comes 390.")."""
        if self.task == DISTRACTOR:
            return self.answer + "."
        return f"{self.question} {self.answer}."

    @property
    def key(self) -> str:
        """Identity for de-duplication (tasks: the question decides the answer; chatter: both)."""
        return f"{self.question}\n{self.answer}"


def _successor(rng: random.Random) -> Item:
    n = rng.randint(1, 998)
    return Item("successor", f"after {n} comes", str(n + 1))


def _larger(rng: random.Random) -> Item:
    a, b = rng.sample(range(10, 100), 2)
    return Item("larger", f"of {a} and {b} the larger is", str(max(a, b)))


def _parity(rng: random.Random) -> Item:
    n = rng.randint(10, 9999)
    return Item("parity", f"{n} is", "even" if n % 2 == 0 else "odd")


def _count(rng: random.Random) -> Item:
    alphabet = rng.sample("abcdef", 3)
    target = alphabet[0]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 8)))
    return Item("count", f"{text} has ? {target}:", str(text.count(target)))


def _lookup(rng: random.Random) -> Item:
    keys = rng.sample(LETTERS, rng.randint(2, 4))
    values = [rng.randint(10, 99) for _ in keys]
    pairs = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    pick = rng.randrange(len(keys))
    return Item("lookup", f"{pairs}; {keys[pick]} is", str(values[pick]))


def _sort(rng: random.Random) -> Item:
    digits = [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]
    return Item("sort", " ".join(map(str, digits)) + " in order is", " ".join(map(str, sorted(digits))))


def _chatter(rng: random.Random) -> Item:
    topic = rng.choice(WORDS)
    answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10)))
    return Item(DISTRACTOR, f"Tell me about the {topic}.", answer)


GENERATORS: dict[str, Callable[[random.Random], Item]] = {
    "successor": _successor,
    "larger": _larger,
    "parity": _parity,
    "count": _count,
    "lookup": _lookup,
    "sort": _sort,
    DISTRACTOR: _chatter,
}


def make_item(task: str, rng: random.Random) -> Item:
    if task not in GENERATORS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(GENERATORS)})")
    return GENERATORS[task](rng)


def chat_record(item: Item, **extra) -> dict:
    """The chat-format JSONL record dsel reads (docs/algorithms.md §2)."""
    messages = [{"role": "user", "content": item.question}, {"role": "assistant", "content": item.answer}]
    return {"messages": messages, **extra}


def exact_match(prediction: str, answer: str) -> bool:
    """Exact match after stripping surrounding whitespace (the generation stops at EOS)."""
    return prediction.strip() == answer.strip()


# --- data sets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSizes:
    """How many examples of each kind to generate."""

    pool: int = 3000  # training pool (all tasks + distractors)
    distractor_share: float = 0.2  # share of the pool that is `chatter`
    validation_per_task: int = 8  # small target sets, as LESS and BIDS use
    test_per_task: int = 200  # held-out exact-match evaluation


@dataclass(frozen=True)
class Datasets:
    """Everything one seed trains, selects and evaluates on."""

    pool: list[Item]
    validation: dict[str, list[Item]]
    test: dict[str, list[Item]]


def draw_distinct(
    make: Callable[[random.Random], Item], rng: random.Random, count: int, seen: set[str],
    key: Callable[[Item], str] = lambda item: item.key,
) -> list[Item]:
    """`count` items from `make` whose `key` is not in `seen` (which is updated)."""
    items: list[Item] = []
    attempts = 0
    while len(items) < count:
        attempts += 1
        if attempts > 200 * count + 1000:
            raise RuntimeError(f"cannot draw {count} distinct items")
        item = make(rng)
        if key(item) in seen:
            continue
        seen.add(key(item))
        items.append(item)
    return items


def unique_items(task: str, rng: random.Random, count: int, seen: set[str]) -> list[Item]:
    """`count` items of `task` whose keys are not in `seen` (which is updated)."""
    return draw_distinct(lambda r: make_item(task, r), rng, count, seen)


def test_sets(sizes: PoolSizes, seed: int = 10_000) -> dict[str, list[Item]]:
    """Held-out sets: fixed across benchmark seeds, so seeds differ only in what is trained."""
    rng = random.Random(seed)
    seen: set[str] = set()
    return {task: unique_items(task, rng, sizes.test_per_task, seen) for task in TASKS}


def build_datasets(sizes: PoolSizes, seed: int) -> Datasets:
    """Pool (shuffled; tasks in equal shares, plus distractors), validation and test sets.

    No task question appears twice anywhere, and the pool and validation sets never contain a test
    question, so the held-out accuracy measures generalization, not memorization.
    """
    test = test_sets(sizes)
    seen = {item.key for items in test.values() for item in items}
    rng = random.Random(seed)
    distractors = int(round(sizes.pool * sizes.distractor_share))
    per_task = (sizes.pool - distractors) // len(TASKS)
    distractors = sizes.pool - per_task * len(TASKS)
    validation = {task: unique_items(task, rng, sizes.validation_per_task, seen) for task in TASKS}
    pool: list[Item] = []
    for task in TASKS:
        pool += unique_items(task, rng, per_task, seen)
    pool += unique_items(DISTRACTOR, rng, distractors, seen)
    rng.shuffle(pool)
    return Datasets(pool=pool, validation=validation, test=test)


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def write_selection_inputs(data: Datasets, directory: Path) -> dict[str, object]:
    """Write the pool and validation sets as dsel reads them; returns their absolute paths.

    Pool lines carry an `id` naming the task (dsel ignores it; the report uses it for the true
    composition of each subset). Validation files are one per task.
    """
    directory = Path(directory).resolve()
    train = directory / "train.jsonl"
    write_jsonl(train, (chat_record(item, id=f"{item.task}-{i:05d}") for i, item in enumerate(data.pool)))
    validation = {}
    for task, items in data.validation.items():
        path = directory / "validation" / f"{task}.jsonl"
        write_jsonl(path, (chat_record(item, task=task) for item in items))
        validation[task] = str(path)
    return {"train": str(train), "validation": validation}


def pretraining_lines(
    rng: random.Random, count: int, exclude: set[str] = frozenset(), tasks: Sequence[str] | None = None
) -> list[str]:
    """Generic text from the same generators: narrative forms of every capability and chatter.

    Never the chat form, so the base model has the skills but not the instruction format.
    Instances whose question is in `exclude` (the test sets) are skipped.
    """
    return [prefix + completion for prefix, completion in pretraining_pieces(rng, count, exclude, tasks)]


def pretraining_pieces(
    rng: random.Random, count: int, exclude: set[str] = frozenset(), tasks: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """Narrative lines split into (context, completion): the prompt, then the answer
    ("after 389 comes " | "390."); a chatter line is all completion (generic text)."""
    kinds = list(TASKS if tasks is None else tasks) + [DISTRACTOR]
    pieces: list[tuple[str, str]] = []
    while len(pieces) < count:
        item = make_item(rng.choice(kinds), rng)
        if item.question in exclude:
            continue
        if item.task == DISTRACTOR:
            pieces.append(("", item.narrative))
        else:
            pieces.append((item.question + " ", item.answer + "."))
    return pieces
