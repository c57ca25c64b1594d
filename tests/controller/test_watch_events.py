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


def selection(version: str, generation: int = 1) -> dict:
    return {"metadata": {"name": "alpha", "namespace": "default", "resourceVersion": version,
                         "generation": generation}, "status": {"phase": "Warmup"}}


def test_the_event_that_starts_the_loop_serves_its_first_round() -> None:
    latest = LatestSelections()
    assert latest.fresh("default", "alpha") is None
    latest.seen("default", "alpha", selection("5"))
    assert latest.fresh("default", "alpha") == selection("5")


def test_after_a_status_write_a_round_reads_until_the_watch_delivers_its_echo() -> None:
    latest = LatestSelections()
    latest.seen("default", "alpha", selection("5"))
    latest.known("default", "alpha", selection("6"))  # the status write's answer
    assert latest.fresh("default", "alpha") is None
    latest.seen("default", "alpha", selection("6"))
    assert latest.fresh("default", "alpha") == selection("6")


def test_a_change_after_the_last_known_version_is_read_from_the_api() -> None:
    latest = LatestSelections()
    latest.known("default", "alpha", selection("6"))
    latest.seen("default", "alpha", selection("6"))
    latest.seen("default", "alpha", selection("7", generation=2))  # a spec edit by someone else
    assert latest.fresh("default", "alpha") is None
    latest.known("default", "alpha", selection("7", generation=2))  # the round's GET
    assert latest.fresh("default", "alpha") == selection("7", generation=2)


def test_an_older_echo_arriving_late_is_not_taken() -> None:
    latest = LatestSelections()
    latest.known("default", "alpha", selection("8"))
    latest.seen("default", "alpha", selection("7"))  # the previous write's echo, still on its way
    assert latest.fresh("default", "alpha") is None


def test_a_missing_resource_or_a_forgotten_one_is_read_from_the_api() -> None:
    latest = LatestSelections()
    latest.seen("default", "alpha", selection("5"))
    latest.known("default", "alpha", None)  # the GET found nothing
    assert latest.fresh("default", "alpha") is None
    latest.seen("default", "alpha", selection("9"))
    latest.forget("default", "alpha")
    assert latest.fresh("default", "alpha") is None
