"""What the reconcile loops take from watch events: which Job events wake a loop (the echo of its
own create does not), and when a watched DataSelection body stands in for a GET."""

from __future__ import annotations

import asyncio

import pytest

from selection_operator.reconciler import LatestSelections, Wakeups


def job(name: str, version: str, suspend: bool = False) -> dict:
    return {"metadata": {"name": name, "resourceVersion": version}, "spec": {"suspend": suspend}}


@pytest.fixture
def wakeups() -> tuple[Wakeups, asyncio.Event]:
    found = Wakeups()
    return found, found.register("default", "alpha")


def test_the_added_event_of_a_job_the_loop_created_wakes_nobody(wakeups) -> None:
    found, event = wakeups
    found.created_job("default", "alpha", job("alpha-warmup", "7"))
    found.poke_for_job("default", "alpha", "ADDED", job("alpha-warmup", "7"))
    assert not event.is_set()
    found.poke_for_job("default", "alpha", "MODIFIED", job("alpha-warmup", "8"))  # the Job controller's update
    assert event.is_set()


def test_only_the_exact_echo_is_skipped(wakeups) -> None:
    found, event = wakeups
    found.created_job("default", "alpha", job("alpha-warmup", "7"))
    found.poke_for_job("default", "alpha", "ADDED", job("alpha-warmup", "9"))  # changed since the create
    assert event.is_set()


def test_an_echo_is_skipped_once(wakeups) -> None:
    found, event = wakeups
    found.created_job("default", "alpha", job("alpha-warmup", "7"))
    found.poke_for_job("default", "alpha", "ADDED", job("alpha-warmup", "7"))
    found.poke_for_job("default", "alpha", "ADDED", job("alpha-warmup", "7"))  # e.g. a watch replay
    assert event.is_set()


def test_the_first_event_after_the_create_consumes_the_expectation(wakeups) -> None:
    # The ADDED event can arrive before the create's response: it woke the loop, and no later
    # event is taken for an echo.
    found, event = wakeups
    found.poke_for_job("default", "alpha", "ADDED", job("alpha-warmup", "7"))
    assert event.is_set()
    event.clear()
    found.created_job("default", "alpha", job("alpha-warmup", "7"))
    found.poke_for_job("default", "alpha", "MODIFIED", job("alpha-warmup", "8"))
    assert event.is_set()
    event.clear()
    found.poke_for_job("default", "alpha", "ADDED", job("alpha-warmup", "7"))
    assert event.is_set()


def test_a_job_created_suspended_wakes_the_loop(wakeups) -> None:
    # Queued by Kueue: no status update follows until admission, so the loop must look now.
    found, event = wakeups
    found.created_job("default", "alpha", job("alpha-warmup", "7", suspend=True))
    found.poke_for_job("default", "alpha", "ADDED", job("alpha-warmup", "7", suspend=True))
    assert event.is_set()


def test_listings_and_other_selections_are_not_echoes(wakeups) -> None:
    found, event = wakeups
    beta = found.register("default", "beta")
    found.created_job("default", "alpha", job("alpha-warmup", "7"))
    found.poke_for_job("default", "beta", "ADDED", job("alpha-warmup", "7"))
    assert beta.is_set() and not event.is_set()
    found.poke_for_job("default", "alpha", None, job("alpha-warmup", "7"))  # kopf's initial listing
    assert event.is_set()


def test_expectations_go_with_the_loop(wakeups) -> None:
    found, event = wakeups
    found.created_job("default", "alpha", job("alpha-warmup", "7"))
    found.unregister("default", "alpha", event)
    again = found.register("default", "alpha")
    found.poke_for_job("default", "alpha", "ADDED", job("alpha-warmup", "7"))
    assert again.is_set()


def selection(version: str) -> dict:
    return {"metadata": {"name": "alpha", "namespace": "default", "resourceVersion": version},
            "status": {"phase": "Warmup"}}


# Steps: ("seen", v) a watch event with resourceVersion v; ("known", v) an API answer (GET or
# status write) with v, None for "not found"; ("forget", None) the loop stops; ("fresh", v) the
# body a round takes from the watch (None: it GETs).
SCENARIOS = {
    "the event that starts the loop serves its first round": [("fresh", None), ("seen", "5"), ("fresh", "5")],
    "after a status write a round reads until the watch delivers its echo": [
        ("seen", "5"), ("known", "6"), ("fresh", None), ("seen", "6"), ("fresh", "6")],
    "a change since the last known version (a spec edit) is read from the API": [
        ("known", "6"), ("seen", "6"), ("seen", "7"), ("fresh", None), ("known", "7"), ("fresh", "7")],
    "an older echo arriving late is not taken": [("known", "8"), ("seen", "7"), ("fresh", None)],
    "a resource the API did not find is read again": [("seen", "5"), ("known", None), ("fresh", None)],
    "a forgotten resource is read from the API": [("seen", "9"), ("forget", None), ("fresh", None)],
}


@pytest.mark.parametrize("steps", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_when_a_watched_body_stands_in_for_a_get(steps) -> None:
    latest = LatestSelections()
    for step, (action, version) in enumerate(steps):
        if action == "seen":
            latest.seen("default", "alpha", selection(version))
        elif action == "known":
            latest.known("default", "alpha", selection(version) if version else None)
        elif action == "forget":
            latest.forget("default", "alpha")
        else:
            expected = selection(version) if version else None
            assert latest.fresh("default", "alpha") == expected, f"step {step}"
