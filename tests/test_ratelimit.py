"""The one token bucket: commands take a token or are refused, the MQTT drain waits for one."""

from __future__ import annotations

import asyncio

import pytest

from agent._ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_take_refuses_over_the_rate_and_refills_with_time() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now = 0.5
    assert [bucket.take() for _ in range(2)] == [True, False]


def test_wait_sleeps_for_what_each_waiter_owes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The burst goes at once; then waiters together are spaced at the rate, in turn."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 9))

    monkeypatch.setattr("agent._ratelimit.asyncio.sleep", sleep)
    bucket = TokenBucket(rate=10, burst=2, clock=Clock())

    async def waits() -> None:
        for _ in range(5):
            await bucket.wait()

    asyncio.run(waits())
    assert slept == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5)])
def test_a_bucket_that_could_never_give_a_token_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="need rate > 0 and burst >= 1"):
        TokenBucket(rate, burst)
