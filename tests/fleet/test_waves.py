"""The rollout's arithmetic: wave sizes, the spec's errors, names from references."""

from __future__ import annotations

import pytest

from agent.errors import RolloutError
from agent.fleet import module_name, repository, wave_sizes


@pytest.mark.parametrize(
    ("spec", "members", "sizes"),
    [
        ("1,10%,50%,100%", 20, (1, 2, 10, 20)),
        ("1,10%,50%,100%", 6, (1, 3, 6)),  # 10% of 6 rounds up to 1: that wave adds nobody
        ("1,10%,50%,100%", 1, (1,)),
        ("2,5,100%", 3, (2, 3)),  # a count past the members is all of them
        ("100%", 7, (7,)),
        ("25%,100%", 100, (25, 100)),
    ],
)
def test_waves_are_cumulative_and_skip_empty_ones(
    spec: str, members: int, sizes: tuple[int, ...]
) -> None:
    assert wave_sizes(spec, members) == sizes


@pytest.mark.parametrize(
    ("spec", "members", "message"),
    [
        ("1,10%,50%", 20, "the last wave must be 100%"),
        ("1,ten%,100%", 20, "'ten%' is not a step"),
        ("1,,100%", 20, "'' is not a step"),
        ("0,100%", 20, "'0' is out of range"),
        ("1,150%,100%", 20, "'150%' is out of range"),
        ("5,10%,100%", 20, "reach 5, 2; each must reach at least as many"),
    ],
)
def test_a_bad_wave_spec_names_the_step_and_what_is_expected(
    spec: str, members: int, message: str
) -> None:
    with pytest.raises(RolloutError, match="--waves") as caught:
        wave_sizes(spec, members)
    assert message in str(caught.value)


def test_the_module_name_is_the_last_part_of_the_repository() -> None:
    assert module_name("host:5000/edge/scale:1.1.0") == "scale"
    assert module_name("registry.example/scale@sha256:" + "a" * 64) == "scale"
    assert repository("host:5000/edge/scale:1.1.0") == "host:5000/edge/scale"


def test_a_reference_without_a_registry_is_refused() -> None:
    with pytest.raises(RolloutError, match="explicit registry host"):
        module_name("scale:1.0")
    with pytest.raises(RolloutError, match="not a local layout"):
        module_name("oci:/tmp/layout:1.0")
