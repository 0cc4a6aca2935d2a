"""The dashboard's overview figures: computed once, served while fresh, refreshed in the background."""

from __future__ import annotations

import threading

from ilm.overview import Overview


def test_fresh_figures_are_served_without_recomputing_and_stale_ones_refresh_in_the_background() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def compute() -> dict[str, int]:
        calls.append(1)
        if len(calls) > 1:
            gate.wait(60)  # the refresh is held until the test has seen the old figures served
        return {"n": len(calls)}

    ov = Overview(compute, max_age=3600)
    first = ov.get()
    assert first.data == {"n": 1} and ov.get() is first and len(calls) == 1
    ov.max_age = 0.0  # now every figure is stale
    served = ov.get()  # the old figures at once, a refresh started
    assert served is first
    assert ov.get() is first  # still refreshing: no second refresh, the old figures again
    gate.set()
    for _ in range(600):
        if ov.get().data == {"n": 2}:
            break
        threading.Event().wait(0.1)
    assert ov.get().data["n"] >= 2 and ov.get().computed_at >= first.computed_at


def test_a_failing_refresh_keeps_the_last_figures() -> None:
    state = {"fail": False}

    def compute() -> dict[str, bool]:
        if state["fail"]:
            raise RuntimeError("catalog down")
        return {"ok": True}

    ov = Overview(compute, max_age=0.0)
    first = ov.get()
    state["fail"] = True
    assert ov.get() is first
    ov.invalidate()
    state["fail"] = False
    assert ov.get().data == {"ok": True}
