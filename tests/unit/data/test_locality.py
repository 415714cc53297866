"""The synthetic 2-D rule grids behind benchmarks/locality.py: rules hold, the noise rate and the floor are right."""

import math
import random

import pytest

from orchestrator.data.locality import RULES, RuleGrids


@pytest.mark.parametrize("rule", sorted(RULES))
def test_cells_follow_their_rule_except_for_the_noise(rule):
    grids = RuleGrids(rule, side=8)
    rng = random.Random(0)
    follow = total = 0
    for _ in range(400):
        x = grids.sample(rng).tolist()
        assert all(0 <= v < grids.alphabet for row in x for v in row)
        for r in range(1, 8):
            for c in range(1, 8):
                follow += x[r][c] == RULES[rule](x[r - 1][c - 1], x[r][c - 1], grids.alphabet)
                total += 1
    hit = 1 - grids.noise + grids.noise / grids.alphabet  # a redrawn cell can land on the rule's value
    assert abs(follow / total - hit) < 0.01


def test_floor_is_the_mean_conditional_entropy():
    grids = RuleGrids("diagonal", side=8, alphabet=8, noise=0.1)
    hit, miss = 0.9125, 0.0125
    cell = -(hit * math.log(hit) + 7 * miss * math.log(miss))
    assert grids.cell_entropy() == pytest.approx(cell)
    assert grids.floor() == pytest.approx((15 * math.log(8) + 49 * cell) / 64)
    assert grids.floor() < math.log(8)  # below what the alphabet alone gives


def test_floor_is_reached_by_the_rule_itself():
    """The empirical loss of the true conditional distribution on sampled grids matches the floor."""
    grids = RuleGrids("max", side=6, alphabet=4, noise=0.2)
    rng, k, e = random.Random(1), 4, 0.2
    nll = n = 0
    for _ in range(3000):
        x = grids.sample(rng).tolist()
        for r in range(6):
            for c in range(6):
                if r == 0 or c == 0:
                    p = 1 / k
                else:
                    p = (1 - e + e / k) if x[r][c] == RULES["max"](x[r - 1][c - 1], x[r][c - 1], k) else e / k
                nll -= math.log(p)
                n += 1
    assert nll / n == pytest.approx(grids.floor(), abs=0.02)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown rule"):
        RuleGrids("spiral", side=8)
    with pytest.raises(ValueError, match="noise"):
        RuleGrids("diagonal", side=8, noise=0.0)
