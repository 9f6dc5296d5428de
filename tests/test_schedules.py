"""Schedules are pure functions of the step with the documented shapes."""

from __future__ import annotations

import math

import pytest

from minidalle.training.schedules import kl_weight, learning_rate, temperature

# --- temperature ---------------------------------------------------------------------


def test_exp_temperature_endpoints_midpoint_and_hold():
    assert temperature(0, 1.0, 1 / 16, 1000, "exp") == pytest.approx(1.0)
    assert temperature(1000, 1.0, 1 / 16, 1000, "exp") == pytest.approx(1 / 16)
    # geometric interpolation: halfway is the geometric mean sqrt(1 * 1/16)
    assert temperature(500, 1.0, 1 / 16, 1000, "exp") == pytest.approx(0.25)
    assert temperature(250, 2.0, 0.5, 1000, "exp") == pytest.approx(2.0 * 0.25**0.25)
    # held after the end (and before the start)
    for step in (1001, 5000, 10**7):
        assert temperature(step, 1.0, 1 / 16, 1000, "exp") == pytest.approx(1 / 16)
    assert temperature(-5, 1.0, 1 / 16, 1000, "exp") == pytest.approx(1.0)


def test_exp_temperature_decreases_monotonically():
    values = [temperature(s, 1.0, 1 / 16, 100, "exp") for s in range(0, 101)]
    assert all(a > b for a, b in zip(values, values[1:]))
    # a constant ratio per step: exponential, not linear
    ratios = [b / a for a, b in zip(values, values[1:])]
    assert max(ratios) == pytest.approx(min(ratios))


def test_cosine_temperature_midpoint_is_arithmetic_mean():
    assert temperature(0, 1.0, 1 / 16, 1000, "cosine") == pytest.approx(1.0)
    assert temperature(1000, 1.0, 1 / 16, 1000, "cosine") == pytest.approx(1 / 16)
    assert temperature(500, 1.0, 1 / 16, 1000, "cosine") == pytest.approx((1.0 + 1 / 16) / 2)
    assert temperature(250, 1.0, 0.0, 1000, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert temperature(4000, 1.0, 1 / 16, 1000, "cosine") == pytest.approx(1 / 16)


def test_temperature_defaults_are_dalle_decay():
    assert temperature(0) == pytest.approx(1.0)
    assert temperature(10_000) == pytest.approx(1 / 16)
    assert temperature(5_000) == pytest.approx(0.25)


def test_unknown_temperature_kind_raises():
    with pytest.raises(ValueError, match="linear"):
        temperature(10, kind="linear")


# --- KL weight -------------------------------------------------------------------------


def test_kl_weight_linear_warmup_then_constant():
    beta = 6.6
    assert kl_weight(0, beta, 1000) == 0.0
    assert kl_weight(500, beta, 1000) == pytest.approx(beta / 2)
    assert kl_weight(250, beta, 1000) == pytest.approx(beta / 4)
    assert kl_weight(1000, beta, 1000) == pytest.approx(beta)
    assert kl_weight(123_456, beta, 1000) == pytest.approx(beta)


def test_kl_weight_without_warmup_is_beta_immediately():
    assert kl_weight(0, 3.0, 0) == pytest.approx(3.0)
    assert kl_weight(0, 3.0) == pytest.approx(3.0)
    assert kl_weight(77, 3.0, 0) == pytest.approx(3.0)


# --- learning rate ---------------------------------------------------------------------


def test_learning_rate_linear_warmup_values():
    peak, warmup, total = 1e-3, 100, 1100
    assert learning_rate(0, peak, warmup, total) == pytest.approx(peak * 1 / 100)
    assert learning_rate(49, peak, warmup, total) == pytest.approx(peak * 50 / 100)
    assert learning_rate(99, peak, warmup, total) == pytest.approx(peak)
    warm = [learning_rate(s, peak, warmup, total) for s in range(warmup)]
    assert all(0 < a < b for a, b in zip(warm, warm[1:]))
    assert all(v <= peak * (1 + 1e-12) for v in warm)


def test_learning_rate_peak_cosine_midpoint_and_floor():
    peak, warmup, total, min_ratio = 1e-3, 100, 1100, 0.1
    assert learning_rate(warmup, peak, warmup, total, min_ratio) == pytest.approx(peak)
    middle = warmup + (total - warmup) // 2
    assert learning_rate(middle, peak, warmup, total, min_ratio) == pytest.approx(
        peak * (min_ratio + (1 - min_ratio) / 2)
    )
    assert learning_rate(total, peak, warmup, total, min_ratio) == pytest.approx(min_ratio * peak)
    assert learning_rate(total + 500, peak, warmup, total, min_ratio) == pytest.approx(min_ratio * peak)
    decay = [learning_rate(s, peak, warmup, total, min_ratio) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert learning_rate(0, peak, 0, 1000, 0.0) == pytest.approx(peak)
    assert learning_rate(1000, peak, 0, 1000, 0.0) == pytest.approx(0.0, abs=1e-15)


def test_schedules_are_pure_functions_of_the_step():
    """A resumed run sees what an uninterrupted run saw: same input, same output, any order."""
    steps = [0, 7, 50, 99, 100, 600, 1100, 3000]
    first = [
        (learning_rate(s, 3e-4, 100, 1100), temperature(s, 1.0, 1 / 16, 1000), kl_weight(s, 2.0, 500)) for s in steps
    ]
    again = [
        (learning_rate(s, 3e-4, 100, 1100), temperature(s, 1.0, 1 / 16, 1000), kl_weight(s, 2.0, 500))
        for s in reversed(steps)
    ]
    assert first == list(reversed(again))
    for _ in range(3):
        learning_rate(5, 3e-4, 100, 1100)
    assert learning_rate(600, 3e-4, 100, 1100) == first[5][0]
