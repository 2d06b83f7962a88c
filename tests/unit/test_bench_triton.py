"""`whaleid bench triton`'s batch-1 latency measurement (bench.triton_serving.paired_latency_ms): the paths take
turns in short blocks, so a slow spell of the machine lands on each of them alike; the in-process baseline is the
fastest of the settings measured (best_direct_settings), not the first."""

from __future__ import annotations

from bench.triton_serving import best_direct_settings, paired_latency_ms


def test_paths_take_turns_in_blocks_with_the_order_rotating():
    calls: list[tuple[str, bytes]] = []

    def path(name):
        return lambda images: calls.append((name, images[0]))

    times = paired_latency_ms({"a": path("a"), "b": path("b")}, [b"x", b"y", b"z"], 5, block=2)
    assert {name: len(values) for name, values in times.items()} == {"a": 5, "b": 5}
    assert [name for name, _ in calls] == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "b"]
    # each path gets the same images in each turn
    assert [image for _, image in calls] == [b"x", b"y"] * 2 + [b"z", b"x"] * 2 + [b"y"] * 2


def test_the_baseline_is_the_fastest_in_process_setting_for_each_measurement():
    medians = {"direct[default]_p50": 7.5, "direct[one]_p50": 6.0, "direct[spin]_p50": 6.4,
               "direct[default]_ips": 280.0, "direct[one]_ips": 310.0, "direct[spin]_ips": 330.0}
    assert best_direct_settings(medians, ["default", "one", "spin"]) == ("one", "spin")
    assert best_direct_settings(medians, ["default"]) == ("default", "default")
