"""The `transfer` scenario: a pool that differs from the targets, as in the LESS and BIDS papers.

The validation sets (8 per task) and the held-out test sets are samples of the *target*
distribution: exactly the in-domain generators of `tasks.py` (the same test sets). The pool is a
mixture, per capability, of

  ingredient     what it is here                                       why a real pool has it
  on-target      the target generator, correct answer                  the data that helps
  off-target     the same skill on operands of other sizes             instruction pools mix
                 (4-digit successors, 3-digit `larger`, 6-digit        sources that share a skill
                 parity, 10-16 letter `count`, 5-7 key `lookup`,       but not the target's format
                 7-9 digit `sort`)                                     or difficulty
  wrong          on-target prompt, an answer drawn from the task's     crowd, scraped and synthetic
                 answer space that is not the right one                labels contain mistakes
  flipped        on-target prompt answered by a near rule: the         related tasks whose rule is
                 predecessor, the smaller, parity flipped, the other   close but different (another
                 letters counted, the next key's value, descending     convention, another question)
  duplicates     exact copies of other items of the same task          templated and re-shared data
                                                                       repeats itself
plus the generic `chatter` distractors (`tasks.py`). Shares: `TransferMix`.

A selector that reads the target's few-shot validation set should prefer on-target, correct,
distinct examples; random selection spends most of its budget elsewhere.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from bench.quality import tasks
from bench.quality.tasks import DISTRACTOR, TASKS, Datasets, Item, PoolSizes

KINDS = ("on-target", "off-target", "wrong", "flipped")


@dataclass(frozen=True)
class TransferMix:
    """Shares of each capability's pool slots (they sum to 1), and the distractor share of the pool."""

    on_target: float = 0.34
    off_target: float = 0.30
    wrong: float = 0.12
    flipped: float = 0.12
    duplicates: float = 0.12
    distractor_share: float = 0.15

    def counts(self, slots: int) -> dict[str, int]:
        """Per-kind counts for `slots` task examples; rounding goes to on-target."""
        counts = {
            "off-target": int(round(slots * self.off_target)),
            "wrong": int(round(slots * self.wrong)),
            "flipped": int(round(slots * self.flipped)),
            "duplicates": int(round(slots * self.duplicates)),
        }
        counts["on-target"] = slots - sum(counts.values())
        if counts["on-target"] < 1:
            raise ValueError(f"transfer mix leaves no on-target example in {slots} slots")
        return counts


# --- the rules: the right answer, the near rule and a wrong answer for a question ------------


def _numbers(question: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", question)]


def _count_parts(question: str) -> tuple[str, str]:
    text, _, _, target = question.removesuffix(":").split()
    return text, target


def _lookup_parts(question: str) -> tuple[list[str], list[str], str]:
    pairs, asked = question.removesuffix(" is").split("; ")
    keys, values = zip(*(p.split("=") for p in pairs.split()))
    return list(keys), list(values), asked


def _sort_digits(question: str) -> list[int]:
    return [int(x) for x in question.removesuffix(" in order is").split()]


def solve(task: str, question: str) -> str:
    """The correct answer of a task question (any operand size)."""
    if task == "successor":
        return str(_numbers(question)[0] + 1)
    if task == "larger":
        return str(max(_numbers(question)))
    if task == "parity":
        return "even" if _numbers(question)[0] % 2 == 0 else "odd"
    if task == "count":
        text, target = _count_parts(question)
        return str(text.count(target))
    if task == "lookup":
        keys, values, asked = _lookup_parts(question)
        return values[keys.index(asked)]
    if task == "sort":
        return " ".join(map(str, sorted(_sort_digits(question))))
    raise ValueError(f"no solver for task {task!r}")


def flipped_answer(task: str, question: str) -> str:
    """The answer under a near rule (a plausible, consistent, wrong convention)."""
    if task == "successor":
        return str(_numbers(question)[0] - 1)
    if task == "larger":
        return str(min(_numbers(question)))
    if task == "parity":
        return "odd" if _numbers(question)[0] % 2 == 0 else "even"
    if task == "count":
        text, target = _count_parts(question)
        return str(len(text) - text.count(target))
    if task == "lookup":
        keys, values, asked = _lookup_parts(question)
        return values[(keys.index(asked) + 1) % len(keys)]
    if task == "sort":
        return " ".join(map(str, sorted(_sort_digits(question), reverse=True)))
    raise ValueError(f"no near rule for task {task!r}")


def wrong_answer(task: str, question: str, rng: random.Random) -> str:
    """A random answer from the task's answer space that is not the correct one."""
    right = solve(task, question)
    for _ in range(100):
        if task == "successor":
            guess = str(rng.randint(1, 999))
        elif task == "larger":
            guess = str(rng.randint(10, 99))
        elif task == "parity":
            guess = rng.choice(("even", "odd"))
        elif task == "count":
            guess = str(rng.randint(0, 8))
        elif task == "lookup":
            guess = str(rng.randint(10, 99))
        elif task == "sort":
            digits = _sort_digits(question)
            rng.shuffle(digits)
            guess = " ".join(map(str, digits))
        else:
            raise ValueError(f"no answer space for task {task!r}")
        if guess != right:
            return guess
    # sort of identical digits has no wrong permutation: change one digit instead
    digits = _sort_digits(question)
    digits[0] = (digits[0] + 1) % 10
    return " ".join(map(str, digits))


def is_correct(item: Item) -> bool:
    """Whether the item's answer is right by its task's rule (chatter: always, it has no rule)."""
    return item.task == DISTRACTOR or item.answer == solve(item.task, item.question)


# --- off-target generators: the same skill on operands of other sizes -------------------------


def _successor_far(rng: random.Random) -> Item:
    n = rng.randint(1000, 9998)
    return Item("successor", f"after {n} comes", str(n + 1), "off-target")


def _larger_far(rng: random.Random) -> Item:
    a, b = rng.sample(range(100, 1000), 2)
    return Item("larger", f"of {a} and {b} the larger is", str(max(a, b)), "off-target")


def _parity_far(rng: random.Random) -> Item:
    n = rng.randint(100_000, 999_999)
    return Item("parity", f"{n} is", "even" if n % 2 == 0 else "odd", "off-target")


def _count_far(rng: random.Random) -> Item:
    alphabet = rng.sample("abcdef", 3)
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(10, 16)))
    return Item("count", f"{text} has ? {alphabet[0]}:", str(text.count(alphabet[0])), "off-target")


def _lookup_far(rng: random.Random) -> Item:
    keys = rng.sample(tasks.LETTERS, rng.randint(5, 7))
    values = [rng.randint(10, 99) for _ in keys]
    pairs = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    pick = rng.randrange(len(keys))
    return Item("lookup", f"{pairs}; {keys[pick]} is", str(values[pick]), "off-target")


def _sort_far(rng: random.Random) -> Item:
    digits = [rng.randint(0, 9) for _ in range(rng.randint(7, 9))]
    question = " ".join(map(str, digits)) + " in order is"
    return Item("sort", question, " ".join(map(str, sorted(digits))), "off-target")


OFF_TARGET: dict[str, Callable[[random.Random], Item]] = {
    "successor": _successor_far,
    "larger": _larger_far,
    "parity": _parity_far,
    "count": _count_far,
    "lookup": _lookup_far,
    "sort": _sort_far,
}


# --- the pool ----------------------------------------------------------------------------------


def _draw(make: Callable[[random.Random], Item], rng: random.Random, count: int, questions: set[str]) -> list[Item]:
    """`count` items from `make` whose questions are not in `questions` (which is updated)."""
    return tasks.draw_distinct(make, rng, count, questions, key=lambda item: item.question)


def task_pool(task: str, slots: int, mix: TransferMix, rng: random.Random, questions: set[str]) -> list[Item]:
    """One capability's share of the pool: every ingredient of the module docstring."""
    counts = mix.counts(slots)
    on_target = lambda r: tasks.make_item(task, r)  # noqa: E731
    items = _draw(on_target, rng, counts["on-target"], questions)
    items += _draw(OFF_TARGET[task], rng, counts["off-target"], questions)
    for kind in ("wrong", "flipped"):
        for base in _draw(on_target, rng, counts[kind], questions):
            answer = wrong_answer(task, base.question, rng) if kind == "wrong" else flipped_answer(task, base.question)
            items.append(Item(task, base.question, answer, kind))
    items += [rng.choice(items) for _ in range(counts["duplicates"])]  # exact copies, any ingredient
    return items


def build_datasets(sizes: PoolSizes, mix: TransferMix, seed: int) -> Datasets:
    """Transfer pool (shuffled), on-target validation sets and the in-domain held-out test sets.

    No pool or validation question is a test question, and validation questions are not in the
    pool, so the test accuracy measures generalization to the target distribution.
    """
    test = tasks.test_sets(sizes)
    questions = {item.question for items in test.values() for item in items}
    rng = random.Random(seed)
    distractors = int(round(sizes.pool * mix.distractor_share))
    slots = (sizes.pool - distractors) // len(TASKS)
    distractors = sizes.pool - slots * len(TASKS)
    validation = {
        task: _draw(lambda r, t=task: tasks.make_item(t, r), rng, sizes.validation_per_task, questions)
        for task in TASKS
    }
    pool: list[Item] = []
    for task in TASKS:
        pool += task_pool(task, slots, mix, rng, questions)
    seen = {item.key for item in pool}
    pool += tasks.unique_items(DISTRACTOR, rng, distractors, seen)
    rng.shuffle(pool)
    return Datasets(pool=pool, validation=validation, test=test)
