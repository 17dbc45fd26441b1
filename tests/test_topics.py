"""Topic names and filters: one set of rules for modules, policy, routes and the outbox."""

from __future__ import annotations

import pytest

from agent.errors import PackageError
from agent.supply import ModuleManifest
from agent.topics import covers, filter_error, matches, matches_any, name_error, topic_error


@pytest.mark.parametrize(
    ("topic", "topic_filter", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/+", True),
        ("a/b", "+/+", True),
        ("a/b", "#", True),
        ("a/b", "a/#", True),
        ("a", "a/#", True),
        ("a/b/c", "a/+", False),
        ("a", "a/+", False),
        ("a/b", "a/c", False),
        ("a/b", "a", False),
    ],
)
def test_matching_follows_mqtt(topic: str, topic_filter: str, expected: bool) -> None:
    assert matches(topic, topic_filter) is expected


def test_matches_any_needs_one_filter_to_match() -> None:
    assert matches_any("x/y", ("a/#", "x/+"))
    assert not matches_any("x/y", ("a/#", "x"))
    assert not matches_any("x/y", ())


@pytest.mark.parametrize(
    ("allowed", "requested", "expected"),
    [
        ("alerts/#", "alerts/+", True),
        ("alerts/#", "alerts/#", True),
        ("+/x", "a/x", True),
        ("alerts/+", "alerts/#", False),
        ("a/x", "+/x", False),
        ("alerts/+", "alerts/a/b", False),
        ("alerts", "alerts/#", False),
    ],
)
def test_a_filter_covers_only_what_it_matches_whole(
    allowed: str, requested: str, expected: bool
) -> None:
    assert covers(allowed, requested) is expected


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("", "1 to 128 bytes"),
        ("x" * 129, "1 to 128 bytes"),
        ("/a", "empty level"),
        ("a//b", "empty level"),
        ("a/", "empty level"),
        ("a/+", "'+', '#' or NUL"),
        ("a\0b", "'+', '#' or NUL"),
    ],
)
def test_a_bad_relative_topic_says_why(topic: str, problem: str) -> None:
    assert problem in (topic_error(topic) or "")


def test_a_good_relative_topic_passes() -> None:
    assert topic_error("alerts/pump-1") is None


@pytest.mark.parametrize(
    ("topic_filter", "problem"),
    [
        ("a/#/b", "last level"),
        ("a/b+", "whole levels"),
        ("a/#x", "whole levels"),
        ("a//#", "empty level"),
        ("a/\0", "NUL"),
    ],
)
def test_a_bad_filter_says_why(topic_filter: str, problem: str) -> None:
    assert problem in (filter_error(topic_filter) or "")


@pytest.mark.parametrize("topic_filter", ["#", "+", "a/+/c", "a/#", "a/b"])
def test_good_filters_pass(topic_filter: str) -> None:
    assert filter_error(topic_filter) is None


def test_publishable_names_refuse_wildcards_and_nul_but_not_empty_levels() -> None:
    assert name_error("edge/node-1//x") is None
    assert "'+', '#'" in (name_error("a/#") or "")
    assert name_error("a\0") is not None
    assert name_error("") is not None


def test_a_manifest_emitting_to_a_bad_filter_is_refused_with_the_rule() -> None:
    doc = b'{"name": "m", "version": "1.0.0", "capabilities": {"emit": ["a/#/b"]}}'
    with pytest.raises(PackageError, match=r"'a/#/b' is not a topic filter \('#' may only"):
        ModuleManifest.parse(doc, "manifest")
