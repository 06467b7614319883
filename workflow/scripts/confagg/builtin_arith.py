"""builtin:arith, a seeded procedural set of arithmetic problems.

The embedded default needs problems that need no download and that the bundled
135M model gets right sometimes and wrong sometimes (it is weak at math, so the
numbers stay small). Knobs: how many problems, the seed, the operand count range,
the largest operand, and the share of word problems versus bare expressions.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jon"]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells"]


def _expression(rng: random.Random, n_ops: int, max_value: int) -> tuple[str, int]:
    """A left-to-right expression of + - * whose value is a non-negative integer."""
    value = rng.randint(1, max_value)
    text = str(value)
    for _ in range(n_ops - 1):
        op = rng.choice("+-*" if value <= max_value else "+-")
        if op == "*":
            b = rng.randint(2, 5)
            # Parenthesize so the written expression keeps the left-to-right value.
            text = f"({text}) * {b}" if (" + " in text or " - " in text) else f"{text} * {b}"
            value *= b
        elif op == "-" and value > 1:
            b = rng.randint(1, value - 1)
            text, value = f"{text} - {b}", value - b
        else:
            b = rng.randint(1, max_value)
            text, value = f"{text} + {b}", value + b
    return text, value


def _word_problem(rng: random.Random, n_ops: int, max_value: int) -> tuple[str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    count = rng.randint(2, max_value)
    sentences = [f"{name} has {count} {item}."]
    for _ in range(n_ops - 1):
        if rng.random() < 0.5 and count > 1:
            b = rng.randint(1, count - 1)
            sentences.append(f"{name} gives away {b} {item}.")
            count -= b
        else:
            b = rng.randint(1, max_value)
            sentences.append(f"Then {name} finds {b} more {item}.")
            count += b
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences), count


def generate_problems(n_problems: int = 200, seed: int = 0, min_operands: int = 2,
                      max_operands: int = 3, max_value: int = 20,
                      word_fraction: float = 0.5) -> Iterator[dict[str, str]]:
    """Yield rows {"id", "problem", "answer"}; the same arguments give the same rows."""
    if max_operands < min_operands:
        raise ValueError(f"max_operands ({max_operands}) < min_operands ({min_operands})")
    rng = random.Random(seed)
    for i in range(n_problems):
        n_ops = rng.randint(min_operands, max_operands)
        if rng.random() < word_fraction:
            problem, value = _word_problem(rng, n_ops, max_value)
        else:
            expr, value = _expression(rng, n_ops, max_value)
            problem = f"Compute {expr}."
        yield {"id": f"arith-s{seed}-{i:04d}", "problem": problem, "answer": str(value)}
