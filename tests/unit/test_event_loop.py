"""The worker's and the matcher's event loop is the setting `event_loop` (services.chain.faust_app.use_event_loop):
uvloop by default, asyncio on request; a Faust stage then runs every loop of its process on it (the main loop and
the consumer thread's), says so once at start, and a SIGTERM still stops it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import uvloop

from services.chain.faust_app import EVENT_LOOPS, describe_loop, use_event_loop
from services.core.errors import ConfigError
from services.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_policy():
    before = asyncio.get_event_loop_policy()
    yield
    current = asyncio.get_event_loop_policy()
    try:
        loop = current.get_event_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        loop.close()
    asyncio.set_event_loop_policy(before)
    asyncio.set_event_loop(None)


def loop_of_a_new_thread() -> asyncio.AbstractEventLoop:
    """The kind of loop mode's ServiceThread (Faust's consumer thread) makes: asyncio.new_event_loop in a thread."""
    made = []
    thread = threading.Thread(target=lambda: made.append(asyncio.new_event_loop()))
    thread.start()
    thread.join()
    made[0].close()
    return made[0]


def test_the_default_is_uvloop_and_the_environment_can_choose_asyncio():
    assert load_settings(profile="local", environ={}).event_loop == "uvloop"
    assert load_settings(profile="production", environ={}).event_loop == "uvloop"
    assert load_settings(profile="local", environ={"WHALEID_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    assert set(EVENT_LOOPS) == {"uvloop", "asyncio"}


def test_uvloop_makes_this_threads_loop_and_every_new_loop_uvloop(restore_policy):
    use_event_loop("uvloop")
    current = asyncio.get_event_loop_policy().get_event_loop()
    assert isinstance(current, uvloop.Loop) and not current.is_closed()
    assert isinstance(loop_of_a_new_thread(), uvloop.Loop)
    assert describe_loop(current) == "uvloop.Loop"
    assert current.run_until_complete(asyncio.to_thread(lambda: 42)) == 42  # the thread hops the stages make


def test_asyncio_gives_the_standard_librarys_loops(restore_policy):
    use_event_loop("uvloop")
    use_event_loop("asyncio")
    current = asyncio.get_event_loop_policy().get_event_loop()
    assert type(current).__module__.startswith("asyncio") and not isinstance(current, uvloop.Loop)
    assert not isinstance(loop_of_a_new_thread(), uvloop.Loop)
    assert describe_loop(current) == "asyncio._UnixSelectorEventLoop"


def test_an_unknown_loop_is_refused_with_the_choices(restore_policy):
    before = asyncio.get_event_loop_policy()
    with pytest.raises(ConfigError, match="'event_loop'.*'tokio' is not one of uvloop, asyncio"):
        use_event_loop("tokio")
    assert asyncio.get_event_loop_policy() is before  # nothing changed


# A Faust stage (faust_app.Worker, as the worker and the matcher run it) on the chosen loop. Its "broker" is a TCP
# listener of the test that answers nothing: Faust's producer waits on it, and the stop's reachability check
# (services.chain.shutdown) finds it there. A stop with the broker gone, with a real broker, is
# tests/integration/test_up_down.py's (the stack brought down under running services).
STAGE = textwrap.dedent("""
    import logging, socket, sys
    from services.chain.faust_app import make_app, run_app, use_event_loop
    from services.core.settings import load_settings

    logging.basicConfig(level=logging.INFO)  # as the whaleid command line sets it up
    web = socket.socket()
    web.bind(("127.0.0.1", 0))
    web_port = web.getsockname()[1]
    web.close()
    settings = load_settings(profile="local", environ={}, run_dir=sys.argv[2], kafka_bootstrap=sys.argv[3],
                             event_loop=sys.argv[1])
    use_event_loop(settings.event_loop)
    run_app(make_app(settings, "loop-test", web_port))
""")


@pytest.mark.parametrize("kind, expected", [("uvloop", "uvloop.Loop"), ("asyncio", "asyncio._UnixSelectorEventLoop")])
def test_a_faust_stage_says_its_loop_and_stops_on_sigterm(tmp_path, kind, expected):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    bootstrap = f"127.0.0.1:{listener.getsockname()[1]}"
    proc = subprocess.Popen([sys.executable, "-c", STAGE, kind, str(tmp_path), bootstrap], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in proc.stdout:  # until Faust's producer is starting (the loop line comes before it)
            lines.append(line)
            if "[^---ProducerBuffer]: Starting" in line:
                break
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        stop_s = time.monotonic() - began
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
    console = "".join(lines) + output
    assert f"whaleid-loop-test: event loop {expected}" in console, console[-3000:]
    assert "Signal received: 15" in console, console[-3000:]  # the loop's signal handler took the SIGTERM
    assert proc.returncode == 0 and stop_s < 10, (stop_s, console[-3000:])
    assert "Traceback" not in console and "CancelledError" not in console, console[-3000:]
