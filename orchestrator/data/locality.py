"""Synthetic image-code grids whose cells follow 2-D rules, each with an exact entropy floor.

Raster order puts a cell's upper neighbours W tokens back, so a rule that reads the cell above-left is
plain for an adapter that sees the grid in 2-D (MoSS's causal conv: at the position before the target,
the cell above is inside a k >= 2 kernel) and must be found by attention for a linear adapter. The first row
and column are uniform over an alphabet of ``alphabet`` codes; every other cell follows the rule, except
that with probability ``noise`` it is redrawn uniformly (so a perfect model pays a known, non-zero loss).
``floor()`` is that loss: the mean over the grid's cells of the cell's conditional entropy, in nats.
benchmarks/locality.py trains adapters on these and reports each against its floor.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: rule name -> cell value from (above-left, left) neighbours, alphabet size K
RULES: dict[str, Callable[[int, int, int], int]] = {
    "diagonal": lambda above_left, left, k: above_left,  # stripes down-right
    "diagonal_shift": lambda above_left, left, k: (above_left + 1) % k,  # stripes that cycle the alphabet
    "max": lambda above_left, left, k: max(above_left, left),  # the larger of two 2-D neighbours
}


@dataclass(frozen=True)
class RuleGrids:
    rule: str
    side: int
    alphabet: int = 8
    noise: float = 0.1

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}: one of {sorted(RULES)}")
        if self.side < 2 or self.alphabet < 2 or not 0 < self.noise < 1:
            raise ValueError("side >= 2, alphabet >= 2 and 0 < noise < 1")

    def sample(self, rng: random.Random) -> torch.Tensor:
        """One (side, side) grid of values in [0, alphabet)."""
        k, f = self.alphabet, RULES[self.rule]
        x = [[0] * self.side for _ in range(self.side)]
        for r in range(self.side):
            for c in range(self.side):
                if r == 0 or c == 0 or rng.random() < self.noise:
                    x[r][c] = rng.randrange(k)
                else:
                    x[r][c] = f(x[r - 1][c - 1], x[r][c - 1], k)
        return torch.tensor(x)

    def cell_entropy(self) -> float:
        """Entropy of a rule cell: the rule's value with p = 1 - noise + noise / K, each other noise / K."""
        k, e = self.alphabet, self.noise
        hit, miss = 1 - e + e / k, e / k
        return -(hit * math.log(hit) + (k - 1) * miss * math.log(miss))

    def floor(self) -> float:
        """The lowest mean loss per cell any model can reach, in nats."""
        free = 2 * self.side - 1  # first row and first column: uniform
        n = self.side * self.side
        return (free * math.log(self.alphabet) + (n - free) * self.cell_entropy()) / n
