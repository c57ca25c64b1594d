"""The reduction result, its error type and the budget rule (docs/algorithms.md §8, §15)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, localcontext

import numpy as np

GRANULARITIES = ("instance", "task")


class ReductionError(ValueError):
    """Input a reduction cannot use; the message says what is wrong and where.

    `input` names the offending input ("matrix", "tasks", "budget", "method", "granularity"),
    so a caller can prefix the message with the file or option it came from.
    """

    def __init__(self, message: str, *, input: str | None = None):
        super().__init__(message)
        self.input = input


@dataclass(frozen=True)
class Reduction:
    """An ordered selection: what `selection.json` holds.

    method: a name of `selection.reduce.registry.REDUCERS`.
    budget: the number of selected examples (a count, already resolved from a fraction).
    indices: selected training-example indices (0-based rows of A) in selection order.
    composition: for every task (sorted by name), how many selected examples are closest to
        it (docs/algorithms.md §15); every task appears, 0 when none is.
    parameters: the method and the switches that influenced the result.
    """

    method: str
    budget: int
    indices: list[int]
    composition: dict[str, int]
    parameters: dict = field(default_factory=dict)

    def to_json_dict(self) -> dict:
        return {
            "method": self.method,
            "budget": self.budget,
            "indices": list(self.indices),
            "composition": dict(self.composition),
            "parameters": dict(self.parameters),
        }


def _range_error(budget: object, n: int) -> ReductionError:
    return ReductionError(
        f"budget {budget} must be a fraction in (0, 1] or a count in [1, N={n}]", input="budget"
    )


def resolve_budget(budget: int | float | str, n: int) -> int:
    """The number of examples to select from a pool of `n`.

    An int, or a string of digits without '.', is a count in [1, n]. A float, or a string with
    '.' (or an exponent), is a fraction f in (0, 1]; the count is floor(f * n) computed on the
    decimal value as written (0.29 of 100 is 29, although 0.29 * 100 is 28.999... in binary
    floating point), and must be at least 1.
    """
    if isinstance(budget, (bool, np.bool_)):
        raise _range_error(budget, n)
    if isinstance(budget, str):
        text = budget.strip()
        if not text:
            raise _range_error(repr(budget), n)
        if any(c in text for c in ".eE"):
            try:
                fraction = Decimal(text)
            except InvalidOperation:
                raise _range_error(text, n) from None
            return _from_fraction(fraction, text, n)
        try:
            count = int(text)
        except ValueError:
            raise _range_error(text, n) from None
        return _from_count(count, text, n)
    if isinstance(budget, numbers.Integral):  # int, numpy integers
        return _from_count(int(budget), budget, n)
    if isinstance(budget, numbers.Real):  # float, numpy floats
        value = float(budget)
        if not math.isfinite(value):
            raise _range_error(budget, n)
        return _from_fraction(Decimal(repr(value)), value, n)
    raise ReductionError(
        f"budget {budget!r} must be a number (a fraction in (0, 1] or a count)", input="budget"
    )


def _from_count(count: int, shown: object, n: int) -> int:
    if not 1 <= count <= n:
        raise _range_error(shown, n)
    return int(count)


def _from_fraction(fraction: Decimal, shown: object, n: int) -> int:
    if not fraction.is_finite() or not 0 < fraction <= 1:
        raise _range_error(shown, n)
    with localcontext() as context:
        context.prec = 80  # exact for any fraction written with a few dozen digits
        count = int((fraction * n).to_integral_value(rounding="ROUND_FLOOR"))
    if count < 1:
        raise ReductionError(
            f"budget {shown} of N={n} selects floor({shown} x {n}) = 0 examples; it must "
            f"select at least 1 (use a larger fraction or a count in [1, {n}])",
            input="budget",
        )
    return count
