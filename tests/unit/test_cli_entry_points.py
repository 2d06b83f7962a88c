"""The command line: one registry of benchmarks (`whaleid bench NAME` and `python -m bench NAME` run the same
module with the same options), and `serve` refuses every option a service does not use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


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


def test_serve_refuses_every_option_a_service_does_not_use(capsys):
    from services.chain.serve_cli import SERVICE_OPTIONS

    all_options = {"--index": "1", "--web-port": "1", "--metrics-port": "0", "--source": "sqs"}
    for service, options in SERVICE_OPTIONS.items():
        for flag, value in all_options.items():
            if flag not in options:
                assert main(["serve", service, flag, value]) == 2, (service, flag)
                assert f"`serve {service}` does not use {flag}" in capsys.readouterr().err


def test_upload_with_no_gateway_says_which_url_it_tried_and_what_to_do(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from services.devtools.stack.ports import free_port

    photo = tmp_path / "fin.jpg"
    Image.new("RGB", (32, 32)).save(photo)
    monkeypatch.setenv("WHALEID_RUN_DIR", str(tmp_path / "stack"))  # no up.json beside it: nothing is up
    monkeypatch.setenv("WHALEID_GATEWAY_PORT", str(free_port()))  # nothing listens there
    assert main(["upload", str(photo), "--latitude", "1", "--longitude", "2", "--wait", "0"]) == 2
    err = capsys.readouterr().err
    assert "no gateway answers at http://127.0.0.1:" in err and "--url" in err and "whaleid up" in err


def test_down_with_nothing_up_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WHALEID_RUN_DIR", str(tmp_path / "stack"))
    assert main(["down"]) == 0
    assert "nothing is up" in capsys.readouterr().err
