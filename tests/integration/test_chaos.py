"""`whaleid chaos`: its fast subset end to end (own embedded stack, real services, real faults). The parts that
decide what counts as lost, duplicated or redelivered: tests/unit/test_chaos_accounting.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from services.devtools.chaos.scenarios import FAST

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"name", "uploaded", "identified", "dead_lettered", "lost", "duplicated", "redelivered", "recover_s", "passed"}


def test_chaos_fast_subset_passes_with_nothing_lost_or_duplicated(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "chaos", "--fast", "--json", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert [s["name"] for s in report["scenarios"]] == list(FAST), report
    for scenario in report["scenarios"]:
        assert KEYS <= set(scenario), scenario
        assert scenario["uploaded"] > 0, scenario
        assert not any(scenario["lost"].values()), scenario
        assert not any(scenario["duplicated"].values()), scenario
        assert scenario["passed"], scenario
    faults = [s for s in report["scenarios"] if s["name"] != "hostile_input"]
    assert all(s["identified"] == s["uploaded"] and not s["dead_lettered"] for s in faults), faults
    hostile = next(s for s in report["scenarios"] if s["name"] == "hostile_input")
    assert hostile["bad_inputs"] >= 80 and hostile["with_reason"] == hostile["bad_inputs"], hostile
    assert hostile["dead_lettered"] and hostile["refused"], hostile
    assert report["passed"] is True and proc.returncode == 0, proc.stderr[-3000:]
    assert report["first_failure"] is None and report["failed"] == [] and report["not_run"] == []
    assert json.loads(Path(report["report"]).read_text())["scenarios"] == report["scenarios"]
