"""Phi-accrual failure detection: pure arithmetic on the arrival times the test hands in."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable

import pytest

from syncfab.fabric.core.detector import PhiAccrualDetector


def feed(detector: PhiAccrualDetector, peer: str, intervals_ms: Iterable[int], start_ms: int = 0) -> int:
    """Send a first beat at ``start_ms`` and one after each interval; return the last arrival time."""
    now_ms = start_ms
    detector.heartbeat(peer, now_ms)
    for interval_ms in intervals_ms:
        now_ms += interval_ms
        detector.heartbeat(peer, now_ms)
    return now_ms


def silence_until_suspected_ms(detector: PhiAccrualDetector, peer: str, last_ms: int) -> int:
    silence_ms = 0
    while detector.is_alive(peer, last_ms + silence_ms):
        silence_ms += 1
        assert silence_ms < 60_000, "never suspected"
    return silence_ms


def test_regular_heartbeats_keep_phi_low() -> None:
    detector = PhiAccrualDetector()
    now_ms = 0
    detector.heartbeat("a", now_ms)
    for _ in range(300):
        now_ms += 100
        assert detector.is_alive("a", now_ms)
        assert detector.phi("a", now_ms) < 1.0
        detector.heartbeat("a", now_ms)
    assert detector.last_heard_ms("a") == now_ms


def test_phi_grows_with_silence_and_crosses_the_threshold() -> None:
    detector = PhiAccrualDetector()
    last_ms = feed(detector, "a", [100] * 200)
    phis = [detector.phi("a", last_ms + silence_ms) for silence_ms in range(0, 3_000, 10)]
    assert all(a <= b for a, b in itertools.pairwise(phis))
    assert phis[0] < 0.1 < 7.0 < phis[-1]
    # mean 100 ms, std floored at 50 ms: threshold 8 falls at about mean + 5.2 std = 362 ms.
    crossing_ms = silence_until_suspected_ms(detector, "a", last_ms)
    assert 300 <= crossing_ms <= 2_000
    assert crossing_ms == 362


def test_phi_matches_akkas_formula() -> None:
    detector = PhiAccrualDetector()
    last_ms = feed(detector, "a", [100] * 200)
    for silence_ms in (0, 50, 100, 200, 300, 400, 600):
        y = (silence_ms - 100) / 50
        e = math.exp(-y * (1.5976 + 0.070566 * y * y))
        akka = -math.log10(e / (1.0 + e)) if silence_ms > 100 else -math.log10(1.0 - 1.0 / (1.0 + e))
        assert detector.phi("a", last_ms + silence_ms) == pytest.approx(akka, rel=1e-12)


def test_phi_stays_finite_long_after_silence() -> None:
    detector = PhiAccrualDetector()
    last_ms = feed(detector, "a", [100] * 200)
    for silence_ms in (10_000, 10**6, 10**9):
        phi = detector.phi("a", last_ms + silence_ms)
        assert math.isfinite(phi) and phi > 8.0


def test_jitter_delays_suspicion() -> None:
    regular = PhiAccrualDetector()
    regular_last_ms = feed(regular, "a", [100] * 200)
    rng = random.Random(7)
    jittery = PhiAccrualDetector()
    jittery_last_ms = feed(jittery, "a", [rng.randint(10, 190) for _ in range(200)])
    # Same mean rhythm, wider spread: a silence that is damning on a steady link is normal on a noisy one.
    assert silence_until_suspected_ms(jittery, "a", jittery_last_ms) > silence_until_suspected_ms(
        regular, "a", regular_last_ms
    )


def test_acceptable_pause_shifts_suspicion_by_the_pause() -> None:
    plain = PhiAccrualDetector()
    relaxed = PhiAccrualDetector(acceptable_heartbeat_pause_ms=1_000.0)
    plain_last_ms = feed(plain, "a", [100] * 200)
    relaxed_last_ms = feed(relaxed, "a", [100] * 200)
    plain_ms = silence_until_suspected_ms(plain, "a", plain_last_ms)
    assert silence_until_suspected_ms(relaxed, "a", relaxed_last_ms) == plain_ms + 1_000


def test_first_heartbeat_is_judged_against_the_estimate() -> None:
    detector = PhiAccrualDetector(first_heartbeat_estimate_ms=500.0)
    detector.heartbeat("a", 1_000)
    assert detector.is_alive("a", 1_000)
    assert detector.sample_count("a") == 2
    # Seeds 375 and 625 ms: mean 500, std 125, so about 500 + 5.2 * 125 ms of silence.
    assert 1_000 <= silence_until_suspected_ms(detector, "a", 1_000) <= 1_300


def test_never_heard_peer_is_not_alive() -> None:
    detector = PhiAccrualDetector()
    assert detector.phi("ghost", 0) == math.inf
    assert not detector.is_alive("ghost", 0)
    assert detector.last_heard_ms("ghost") is None
    assert detector.sample_count("ghost") == 0


def test_forget_makes_a_peer_unknown_again() -> None:
    detector = PhiAccrualDetector()
    feed(detector, "a", [100] * 10)
    detector.forget("a")
    detector.forget("never-seen")
    assert not detector.is_alive("a", 1_000)
    assert detector.last_heard_ms("a") is None


def test_window_is_bounded() -> None:
    detector = PhiAccrualDetector(window_size=10)
    feed(detector, "a", [100] * 1_000)
    assert detector.sample_count("a") == 10


def test_window_forgets_old_rhythm() -> None:
    # After a full window of 100 ms beats, the earlier 1 s beats no longer count.
    detector = PhiAccrualDetector(window_size=20)
    last_ms = feed(detector, "a", [1_000] * 50 + [100] * 20)
    reference = PhiAccrualDetector(window_size=20)
    reference_last_ms = feed(reference, "a", [100] * 50)
    assert silence_until_suspected_ms(detector, "a", last_ms) == silence_until_suspected_ms(
        reference, "a", reference_last_ms
    )


def test_beat_after_an_outage_is_not_a_sample() -> None:
    detector = PhiAccrualDetector()
    last_ms = feed(detector, "a", [100] * 200)
    count = detector.sample_count("a")
    detector.heartbeat("a", last_ms + 30_000)
    assert detector.sample_count("a") == count
    assert detector.is_alive("a", last_ms + 30_000)
    assert silence_until_suspected_ms(detector, "a", last_ms + 30_000) == 362


def test_peers_are_independent() -> None:
    detector = PhiAccrualDetector()
    feed(detector, "a", [100] * 50)
    detector.heartbeat("b", 10_000)
    assert detector.is_alive("b", 10_000)
    assert not detector.is_alive("a", 10_000)


def test_time_going_backwards_is_an_error() -> None:
    detector = PhiAccrualDetector()
    detector.heartbeat("a", 1_000)
    with pytest.raises(ValueError):
        detector.heartbeat("a", 999)
    with pytest.raises(ValueError):
        detector.phi("a", 999)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0.0},
        {"window_size": 1},
        {"min_std_deviation_ms": 0.0},
        {"acceptable_heartbeat_pause_ms": -1.0},
        {"first_heartbeat_estimate_ms": 0.0},
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PhiAccrualDetector(**kwargs)
