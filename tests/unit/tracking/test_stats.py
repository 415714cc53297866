"""Means with t intervals, paired differences over seeds and records, and grouping runs by configuration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.tracking.compare import Comparison, Row, markdown
from orchestrator.tracking.seeds import group_rows, paired_to_lora
from orchestrator.tracking.stats import mean_ci, paired_bootstrap, paired_ci, separated


def test_mean_ci_is_the_student_t_interval():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert (ci.n, ci.mean, ci.std) == (3, 2.0, 1.0)
    assert ci.half_width == pytest.approx(4.302652729911275 / math.sqrt(3))  # t(0.975, df=2)
    assert ci.low == pytest.approx(2.0 - ci.half_width) and "±" in ci.text()
    one = mean_ci([5.0, None, float("nan")])
    assert (one.n, one.mean, one.half_width, one.low) == (1, 5.0, None, None)
    with pytest.raises(ValueError):
        mean_ci([])


def test_paired_ci_uses_only_shared_keys():
    d = paired_ci({0: 1.0, 1: 2.0, 2: 3.0, 9: 100.0}, {0: 0.5, 1: 1.5, 2: 2.0})
    assert d.n == 3 and d.mean == pytest.approx(2 / 3)
    assert d.half_width == pytest.approx(4.302652729911275 * np.std([0.5, 0.5, 1.0], ddof=1) / math.sqrt(3))
    assert paired_ci({0: 1.0}, {1: 1.0}) is None


def test_paired_bootstrap_matches_the_t_interval_on_many_records_and_is_reproducible():
    rng = np.random.default_rng(0)
    base = rng.normal(3.0, 1.0, 2000)
    other = base - 0.05 + rng.normal(0, 0.2, 2000)  # per-record pairs: the shared part cancels
    boot = paired_bootstrap(other, base, reps=4000)
    t = mean_ci(other - base)
    assert boot.mean == pytest.approx(t.mean) and boot.half_width == pytest.approx(t.half_width, rel=0.1)
    assert boot.high < 0  # the 0.05 improvement is resolved
    assert paired_bootstrap(other, base, reps=4000) == boot  # seeded
    assert paired_bootstrap([1.0, 2.0], [1.0, 2.0]).half_width == 0.0
    skewed = paired_bootstrap(rng.exponential(1.0, 40), np.zeros(40), reps=2000)
    assert skewed.low < skewed.mean < skewed.high and skewed.high - skewed.mean != skewed.mean - skewed.low
    assert skewed.half_width == max(skewed.high - skewed.mean, skewed.mean - skewed.low)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_separated_needs_a_gap_larger_than_both_half_widths():
    a, b = mean_ci([1.0, 1.1, 0.9]), mean_ci([2.0, 2.1, 1.9])
    assert separated(a, b) is True
    assert separated(a, mean_ci([1.05, 1.2, 0.95])) is False
    assert separated(a, mean_ci([1.0])) is None


def row(variant, seed, value, rank=4, lr=1e-3, label=None, steps=8, budget=8):
    return Row(run_id=f"{variant}{seed}{lr}", run_name=f"{variant}-r{rank}-s{seed}", status="finished", backbone="chameleon",
               variant=variant, label=label or variant, rank=rank, kernel_size=3 if variant == "moss" else None,
               conv_space="full" if variant == "moss" else None, lr=lr, trainable_parameters=100, value=value,
               step=steps, sampled={"adapter.variant": variant, "train.seed": seed},
               curve=[(s, value + (steps - s)) for s in range(1, steps + 1)], seed=seed, budget=budget)


def test_runs_differing_only_in_seed_form_one_configuration_paired_to_lora_by_seed():
    rows = [row("lora", s, v) for s, v in ((0, 2.0), (1, 2.2), (2, 2.1))]
    rows += [row("moss", s, v, label="moss/full") for s, v in ((0, 1.5), (1, 1.8), (2, 1.6), (3, 1.0))]  # seed 3: no pair
    rows += [row("lora", s, v, lr=1e-2) for s, v in ((0, 3.0), (1, 3.2))]  # a worse LoRA configuration
    groups = group_rows(rows, "min")
    assert [(g.first.label, g.first.lr, g.interval.n) for g in groups] == [
        ("moss/full", 1e-3, 4), ("lora", 1e-3, 3), ("lora", 1e-2, 2)]
    assert groups[0].interval.mean == pytest.approx(np.mean([1.5, 1.8, 1.6, 1.0]))
    (pair,) = paired_to_lora(groups)
    assert pair["pairs"] == 3 and pair["lora_lr"] == 1e-3  # against the best LoRA configuration, shared seeds only
    assert pair["diff"] == pytest.approx(np.mean([-0.5, -0.4, -0.5]))
    assert pair["excludes_zero"] is True


def test_the_report_says_when_there_is_one_seed_and_shows_intervals_when_there_are_more():
    single = Comparison("val/image_loss", "min", "test", [row("lora", 0, 2.0), row("moss", 0, 1.9, label="moss/full")])
    text = markdown(single, {})
    assert "One seed per configuration: no intervals" in text and "## Paired difference" not in text
    rows = [row("lora", s, 2.0 + 0.1 * s) for s in range(3)] + [row("moss", s, 2.05 + 0.1 * s, label="moss/full")
                                                                for s in range(3)]
    text = markdown(Comparison("val/image_loss", "min", "test", rows), {})
    assert "## Over seeds" in text and "## Paired difference to LoRA" in text
    assert mean_ci([2.0, 2.1, 2.2]).text() in text  # LoRA's cell: mean ± half-width (n=3)
    data = Comparison("val/image_loss", "min", "test", rows).to_json()
    assert [g["n"] for g in data["groups"]] == [3, 3] and data["paired_to_lora"][0]["pairs"] == 3


def test_the_parameter_plot_draws_intervals_over_seeds(tmp_path):
    from orchestrator.tracking.plots import write_plots

    rows = [row("lora", s, 2.0 + 0.1 * s) for s in range(3)] + [row("moss", s, 1.5 + 0.1 * s, label="moss/full")
                                                                for s in range(3)]
    plots = write_plots(Comparison("val/image_loss", "min", "test", rows), tmp_path)
    assert (tmp_path / plots["val/image_loss vs trainable parameters"]).stat().st_size > 0


def test_grouping_counts_seeds_not_runs_reads_a_common_step_and_survives_nan():
    rows = [row("lora", 0, 2.0), row("lora", 0, 2.0), row("lora", 1, 2.2)]  # seed 0 repeated (num_samples)
    rows += [row("moss", 0, 1.0, label="moss/full"), row("moss", 1, 1.2, label="moss/full", steps=4)]  # stopped early
    rows += [row("moe_lora", 0, float("nan")), row("moe_lora", 1, float("nan"))]  # diverged: no group, no crash
    groups = group_rows(rows, "min")
    lora = next(g for g in groups if g.first.variant == "lora")
    assert lora.interval.n == 2 and lora.repeats == 1 and [r.seed for r in lora.rows] == [0, 1]
    moss = next(g for g in groups if g.first.variant == "moss")
    assert moss.step == 4  # seed 0 read at step 4 too: its curve is value + (8 - step)
    assert moss.interval.mean == pytest.approx(np.mean([1.0 + 4, 1.2]))
    assert {g.first.variant for g in groups} == {"lora", "moss"}
    text = markdown(Comparison("val/image_loss", "min", "test", rows), {})
    assert "## Over seeds" in text
    best_first = group_rows([row("lora", s, v) for s, v in ((0, 1.0), (1, 1.0))]
                            + [row("lora", s, v, lr=1e-2) for s, v in ((0, 3.0), (1, 3.0))], "max")
    assert best_first[0].first.lr == 1e-2  # mode max: the higher mean first


def test_runs_with_other_settings_are_other_configurations():
    a, b = row("lora", 0, 2.0), row("lora", 1, 2.1)
    c = row("lora", 2, 2.2)
    a.settings = b.settings = {"adapter.variant": "lora", "train.grad_accum": "1"}
    c.settings = {"adapter.variant": "lora", "train.grad_accum": "4"}  # separate `moss train` runs, no sampled tag
    assert sorted(g.interval.n for g in group_rows([a, b, c], "min")) == [1, 2]


def test_an_equal_parameter_run_is_paired_with_the_lora_rank_it_was_matched_to():
    lora = [row("lora", s, 2.0 + 0.1 * s, rank=8) for s in range(3)] + [row("lora", s, 9.0, rank=4) for s in range(3)]
    matched = [row("moss", s, 1.9 + 0.1 * s, rank=4, label="moss/full") for s in range(3)]
    for r in matched:
        r.settings = {"adapter.match_params.variant": "lora", "adapter.match_params.rank": "8", "adapter.rank": "4"}
    (pair,) = paired_to_lora(group_rows(lora + matched, "min"))
    assert pair["lora_rank"] == 8 and pair["diff"] == pytest.approx(-0.1) and pair["pairs"] == 3


def test_weighted_paired_bootstrap_is_the_difference_of_token_means():
    """Per-record mean losses weighted by target counts: the difference of the two corpus-level token means,
    whatever the split of tokens over records; a record with no targets drops out."""
    rng = np.random.default_rng(1)
    n = rng.integers(0, 50, 300)
    a, b = rng.normal(2.0, 0.5, 300), rng.normal(2.1, 0.5, 300)
    boot = paired_bootstrap(a, b, reps=2000, weights=n)
    assert boot.mean == pytest.approx(((a * n).sum() - (b * n).sum()) / n.sum())
    assert boot.n == int((n > 0).sum()) and boot.low < boot.mean < boot.high
    assert paired_bootstrap(a, b, reps=2000).std == pytest.approx(np.std(a - b, ddof=1))
    d, w = np.array([1.0, 3.0, 5.0]), np.array([1.0, 1.0, 2.0])  # by hand: mean 3.5, sum w (d - m)^2 = 11
    assert paired_bootstrap(d, np.zeros(3), reps=200, weights=w).std == pytest.approx(np.sqrt(11 / 4 * 3 / 2))
    with pytest.raises(ValueError):
        paired_bootstrap(a, b, weights=np.zeros(300))
    with pytest.raises(ValueError):
        paired_bootstrap(a, b, weights=-np.ones(300))


def test_the_demo_pairs_its_best_run_with_the_other_method_at_the_same_seed():
    from orchestrator.demo import counterpart

    rows = sorted([row("moss", 1, 1.5), row("lora", 0, 1.6), row("lora", 1, 1.7), row("moss", 0, 1.9),
                   row("lora", 2, 1.8)], key=lambda r: r.value)
    assert counterpart(rows[0], rows).run_name == "lora-r4-s1"  # best is MoSS seed 1: LoRA seed 1
    assert counterpart(rows[1], rows).run_name == "moss-r4-s0"  # best is LoRA seed 0: the other method, seed 0
    assert counterpart(row("moss", 5, 1.0), rows) is None  # no run at that seed
