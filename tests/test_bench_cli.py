"""One registry of benchmarks (bench/bench_<name>.py): `whaleid bench NAME` and `python -m bench NAME` run the
same module with the same options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def test_whaleid_bench_runs_the_bench_module_with_its_options(capsys):
    # the module's own option check answers (no server is started for a refused combination)
    assert main(["bench", "triton", "--url", "127.0.0.1:1"]) == 2
    assert "--url needs --repository" in capsys.readouterr().err
    assert main(["bench", "no-such-benchmark"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark" in err and "triton" in err and "embedder" in err and "chain" in err


def test_python_m_bench_is_the_same_entry():
    result = subprocess.run([sys.executable, "-m", "bench", "triton", "--url", "127.0.0.1:1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--url needs --repository" in result.stderr
