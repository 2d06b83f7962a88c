"""`whaleid bench triton`'s batch-1 latency measurement (bench.triton_serving.paired_latency_ms): the paths take
turns request by request, so a slow spell of the machine lands on each of them alike."""

from __future__ import annotations

from bench.triton_serving import paired_latency_ms


def test_paths_take_turns_request_by_request_with_the_order_rotating():
    calls: list[tuple[str, bytes]] = []

    def path(name):
        return lambda images: calls.append((name, images[0]))

    times = paired_latency_ms({"a": path("a"), "b": path("b"), "c": path("c")}, [b"x", b"y"], 4)
    assert {name: len(values) for name, values in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert [name for name, _ in calls] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    # every path gets the same image in each turn
    assert [image for _, image in calls] == [b"x"] * 3 + [b"y"] * 3 + [b"x"] * 3 + [b"y"] * 3

