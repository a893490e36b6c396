"""compute.policy alone (no database): the pure rules the workers, the views and the simulator share."""

import math

import pytest

from compute.policy import (
    GIB,
    NodeFree,
    Request,
    Running,
    Tenant,
    choose,
    estimate_starts,
    jain_index,
    order,
    preemption_victims,
)


def request(id: str, org: str, at: float, accelerators: int = 1, memory: int = 0) -> Request:
    return Request(id=id, organization=org, accelerators=accelerators, memory_bytes=memory, queued_at=at)


def test_a_share_of_two_takes_two_turns_for_each_of_an_equal_organization():
    queue = [request(f"a{i}", "a", i) for i in range(6)] + [request(f"b{i}", "b", 10 + i) for i in range(3)]
    ids = [r.id for r in order(queue, {"a": Tenant(share=2), "b": Tenant()})]
    assert ids == ["a0", "b0", "a1", "a2", "b1", "a3", "a4", "b2", "a5"]


def test_recent_usage_puts_an_organization_behind_one_that_has_used_less():
    queue = [request("heavy", "a", 0), request("light", "b", 5)]
    assert [r.id for r in order(queue, {"a": Tenant(usage_seconds=3600), "b": Tenant(usage_seconds=60)})] == [
        "light",
        "heavy",
    ]


def test_a_job_that_waited_past_the_reserve_time_holds_a_node_from_smaller_ones():
    big, small = request("big", "a", 0, accelerators=2), request("small", "b", 50)
    nodes = [NodeFree("n1", free=1, total=2, memory_bytes=GIB)]
    early = choose([big, small], {}, nodes, now=100, reserve_after=3600)
    assert early.chosen == small and early.waiting["big"].code == "busy"
    late = choose([big, small], {}, nodes, now=5000, reserve_after=3600)
    assert (
        late.chosen is None
        and late.waiting["big"].code == "held"
        and "n1 is held for it" in late.waiting["big"].message
    )
    assert late.waiting["small"].code == "busy"


def test_a_drained_node_takes_nothing():
    nodes = [NodeFree("n1", free=1, total=1, memory_bytes=GIB, schedulable=False)]
    decision = choose([request("j", "a", 0)], {}, nodes, now=1)
    assert decision.chosen is None and decision.waiting["j"].code == "too_big"


def test_preemption_takes_borrowed_capacity_then_the_lowest_class_then_the_newest():
    runs = [
        Running("old-low", "low", 1, started_at=10),
        Running("new-low", "low", 1, started_at=20),
        Running("newest-high", "high", 1, started_at=30),
        Running("lent-high", "high", 1, started_at=5, lent=True),
    ]
    tenants = {"low": Tenant(priority=0), "high": Tenant(priority=1)}
    assert [r.id for r in preemption_victims(runs, 3, tenants)] == ["lent-high", "new-low", "old-low"]
    assert preemption_victims(runs, 5, tenants) is None  # stopping everything would not be enough


def test_estimated_starts_lay_the_queue_onto_the_accelerators_and_never_guess():
    nodes = [("small", GIB, [100.0]), ("big", 8 * GIB, [0.0, math.inf])]
    queue = [
        (request("fits-big-now", "a", 0, memory=4 * GIB), 50.0),
        (request("fits-small", "a", 1), 30.0),
        (request("next-on-big", "a", 2, memory=4 * GIB), None),
        (request("after-unknown", "a", 3, memory=4 * GIB), 10.0),
        (request("too-big", "a", 4, memory=16 * GIB), 10.0),
    ]
    starts = estimate_starts(queue, nodes, now=0.0)
    assert starts == {
        "fits-big-now": 0.0,  # big's free accelerator, now
        "fits-small": 50.0,  # big frees at 50, before small's at 100
        "next-on-big": 80.0,  # after fits-small's 30 s there
        "after-unknown": None,  # behind a job of unknown length, and the other accelerator never frees
        "too-big": None,  # no node has the memory
    }


@pytest.mark.parametrize(
    ("values", "index"), [([1, 1, 1, 1], 1.0), ([4, 0, 0, 0], 0.25), ([2, 2, 0, 0], 0.5), ([], 1.0)]
)
def test_jains_index(values, index):
    assert jain_index(values) == pytest.approx(index)
