"""`whaleid chaos`: the parts that decide what counts as lost, duplicated or redelivered, and the faults' parts (no
servers). Its fast subset end to end: tests/integration/test_chaos.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from services.core import topics
from services.devtools.chaos.observe import TopicObserver
from services.devtools.chaos.proxy import FaultProxy
from services.devtools.chaos.runner import _count, scenario_passed
from services.devtools.chaos.workload import Uploaded, Workload


# --------------------------------------------------------------------------- counting
def _workload(ids):
    workload = Workload("http://unused", "token", len(ids), 1.0, 1)
    workload.uploaded = [Uploaded(i, "probe-0000", 0.0) for i in ids]
    return workload


def test_a_second_different_answer_is_a_duplicate_and_an_identical_one_a_redelivery():
    identified = {"status": "identified", "new_individual": False, "top1": "probe-0000", "stream": 1,
                  "in_identifications": True, "in_new_individuals": False, "settled": True}
    state = {
        "per_sighting": {"a": dict(identified), "b": dict(identified), "c": {"status": "pending", "settled": False}},
        "delivered": {topics.IDENTIFICATIONS: {"a": {"x": 2}, "b": {"x": 1, "y": 1}}, topics.NEW_INDIVIDUALS: {}},
    }
    result = _count(_workload(["a", "b", "c"]), state)
    assert result["redelivered"][topics.IDENTIFICATIONS] == 1
    assert result["duplicated"][topics.IDENTIFICATIONS] == 1
    assert result["lost"]["sightings"] == 1
    assert not scenario_passed(result)


def test_an_identification_missing_from_the_stream_or_a_topic_is_lost():
    state = {
        "per_sighting": {"a": {"status": "identified", "new_individual": True, "top1": "new_individual", "stream": 0,
                               "in_identifications": False, "in_new_individuals": False, "settled": False}},
        "delivered": {topics.IDENTIFICATIONS: {}, topics.NEW_INDIVIDUALS: {}},
    }
    lost = _count(_workload(["a"]), state)["lost"]
    assert lost == {"sightings": 0, "stream": 1, topics.IDENTIFICATIONS: 1, topics.NEW_INDIVIDUALS: 1}


# --------------------------------------------------------------------------- the S3 fault proxy
def _echo_server():
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server


def _round_trip(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(1024)


def test_the_fault_proxy_passes_delays_and_cuts_traffic():
    server = _echo_server()
    proxy = FaultProxy("127.0.0.1", server.getsockname()[1]).start()
    try:
        assert _round_trip(proxy.port) == b"ping"
        proxy.set_delay(0.3)
        began = time.monotonic()
        assert _round_trip(proxy.port) == b"ping"
        assert time.monotonic() - began >= 0.5  # 0.3 s each way
        proxy.set_delay(0.0)
        proxy.set_down(True)
        try:
            answer = _round_trip(proxy.port)
        except OSError:
            answer = b""
        assert answer == b""
        proxy.set_down(False)
        assert _round_trip(proxy.port) == b"ping"
    finally:
        proxy.close()
        server.close()


def test_the_topic_observer_keeps_each_distinct_record_per_key():
    observer = TopicObserver("127.0.0.1:1")
    observer._add(topics.IDENTIFICATIONS, b"s1", b'{"a": 1}')
    observer._add(topics.IDENTIFICATIONS, b"s1", b'{"a": 1}')
    observer._add(topics.IDENTIFICATIONS, b"s1", b'{"a": 2}')
    observer._add(topics.DEAD_LETTER, b"s2", b'{"stage": "worker", "reason": "truncated", "failed_at": 1}')
    observer._add(topics.DEAD_LETTER, b"s2", b'{"stage": "worker", "reason": "truncated", "failed_at": 2}')
    seen = observer.deliveries(topics.IDENTIFICATIONS, ["s1", "s3"])
    assert sorted(seen["s1"].values()) == [1, 2] and "s3" not in seen
    assert list(observer.deliveries(topics.DEAD_LETTER, ["s2"])["s2"].values()) == [2]


# --------------------------------------------------------------------------- the report


def test_the_report_is_written_failing_or_not_with_the_first_failure_at_the_top(tmp_path, monkeypatch):
    """A run whose stack never comes up still writes its report; a failing row names its reason first."""
    from services.devtools.chaos import suite
    from services.devtools.chaos.runner import failure_reason

    def broken_start(self):
        raise RuntimeError("the broker would not start")

    monkeypatch.setattr(suite.ChaosEnvironment, "start", broken_start)
    monkeypatch.setattr(suite.ChaosEnvironment, "stop", lambda self: None)
    options = suite.SuiteOptions(scenarios=["kill_worker", "restart_kafka"], workdir=tmp_path)
    report = suite.run_suite(options, progress=lambda message: None)
    assert report["passed"] is False
    assert report["first_failure"] == {"scenario": "kill_worker", "reason": "RuntimeError: the broker would not start"}
    assert report["not_run"] == ["kill_worker", "restart_kafka"]
    written = json.loads(Path(report["report"]).read_text())
    assert list(written)[:2] == ["passed", "first_failure"] and written["first_failure"] == report["first_failure"]

    ok = {"name": "kill_worker", "uploaded": 3, "identified": 3, "dead_lettered": {}, "refused": 0,
          "lost": {"sightings": 0}, "duplicated": {"stream": 0}, "redelivered": {}, "passed": True}
    lost = {**ok, "name": "restart_kafka", "identified": 0, "dead_lettered": {"unresolved": 3}, "passed": False}
    assert failure_reason(ok) == ""
    assert failure_reason(lost) == "good photos dead-lettered (unresolved 3)"
    rows = suite.report([ok, lost], ["kill_worker", "restart_kafka", "s3_slow"], time.monotonic(),
                        suite.ChaosEnvironment(tmp_path, lambda message: None))
    assert rows["first_failure"] == {"scenario": "restart_kafka", "reason": "good photos dead-lettered (unresolved 3)"}
    assert rows["failed"] == [rows["first_failure"]] and rows["not_run"] == ["s3_slow"] and not rows["passed"]


# --------------------------------------------------------------------------- the new faults' parts
def test_a_full_volume_refuses_writes_with_507_and_lets_reads_through():
    server = _echo_server()
    proxy = FaultProxy("127.0.0.1", server.getsockname()[1]).start()
    try:
        proxy.set_full(True)
        put = b"PUT /sightings/a.jpg HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(put)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 507 ") and b"<Code>InsufficientStorage</Code>" in answer, answer
        assert proxy.refused_writes == 1
        assert _round_trip(proxy.port, b"GET /x HTTP/1.1\r\n\r\n") == b"GET /x HTTP/1.1\r\n\r\n"  # reads pass
        proxy.set_full(False)
        assert _round_trip(proxy.port, put) == put  # space again: the write reaches the server
    finally:
        proxy.close()
        server.close()


def test_each_malformed_record_is_found_by_its_marker_in_a_dead_letter():
    from services.devtools.chaos.malformed import KINDS, _match, malformed_records

    records = malformed_records("0123abcd", per_kind=4)
    assert [k for k, _, _ in records].count("garbage") == 4 and {k for k, _, _ in records} == set(KINDS)
    markers = {m for _, m, _ in records}
    found: dict = {}
    for kind, marker, value in records:  # the dead letter as the chain writes it: decode_original(raw)
        from services.chain.faust_app import decode_original

        original = decode_original(value)
        _match(json.dumps({"stage": "matcher", "reason": "malformed_event", "original": original,
                           "sighting_id": marker if kind == "unknown_version" else ""}).encode(), markers, found)
    assert set(found) == markers


def test_a_scenarios_problems_and_unreasoned_bad_inputs_fail_it():
    from services.devtools.chaos.runner import failure_reason

    ok = {"name": "malformed_record", "uploaded": 3, "identified": 3, "dead_lettered": {}, "refused": 0,
          "lost": {"sightings": 0}, "duplicated": {"stream": 0}, "redelivered": {}, "bad_inputs": 6,
          "with_reason": 6, "problems": []}
    assert scenario_passed(ok) and failure_reason({**ok, "passed": True}) == ""
    short = {**ok, "with_reason": 5, "problems": ["1 malformed record(s) without a dead letter"], "passed": False}
    assert not scenario_passed(short)
    assert failure_reason(short) == "5/6 bad inputs got a reason; 1 malformed record(s) without a dead letter"
