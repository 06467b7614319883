"""builtin:arith, a seeded procedural set of arithmetic problems.

The embedded default needs problems that need no download and that the bundled
135M model gets right sometimes and wrong sometimes (it is weak at math, so the
numbers stay small). Knobs: how many problems, the seed, the operand count range,
the largest operand, the share of word problems versus bare expressions, and the
split.

`split: train` and `split: test` draw from disjoint halves of the problem space, so a
training set never holds a test problem: word problems use disjoint names and items
(every run of 8 words of one holds a name or an item, so the two share no 8-word
sequence either), and bare expressions are kept by the parity of a stable hash of
their text. `split: null` draws from the whole space.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jon"]
_ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells"]
SPLITS = {None: (_NAMES, _ITEMS, None),
          "train": (_NAMES[:5], _ITEMS[:4], 0),
          "test": (_NAMES[5:], _ITEMS[4:], 1)}


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


def _word_problem(rng: random.Random, n_ops: int, max_value: int, names: list[str],
                  items: list[str]) -> tuple[str, int]:
    name, item = rng.choice(names), rng.choice(items)
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
                      word_fraction: float = 0.5,
                      split: str | None = None) -> Iterator[dict[str, str]]:
    """Yield rows {"id", "problem", "answer"}; the same arguments give the same rows."""
    if max_operands < min_operands:
        raise ValueError(f"max_operands ({max_operands}) < min_operands ({min_operands})")
    if split not in SPLITS:
        raise ValueError(f"split must be train, test or null, got {split!r}")
    names, items, parity = SPLITS[split]
    rng = random.Random(seed)
    for i in range(n_problems):
        n_ops = rng.randint(min_operands, max_operands)
        if rng.random() < word_fraction:
            problem, value = _word_problem(rng, n_ops, max_value, names, items)
        else:
            while True:  # about two draws: half of the expressions belong to each split
                expr, value = _expression(rng, n_ops, max_value)
                problem = f"Compute {expr}."
                if parity is None or zlib.crc32(problem.encode()) % 2 == parity:
                    break
        yield {"id": f"arith-s{seed}-{i:04d}", "problem": problem, "answer": str(value)}
