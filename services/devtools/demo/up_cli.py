"""`whaleid up [--run RUN | general] [--catalogue DIR]` and `whaleid down`: the whole local system in one command
each, in the manner of `docker compose`: the embedded stack (Kafka, S3, Redis, Triton, Prometheus) and the chain's
services (worker, matcher, bridge, reconciler, gateway; webhooks when configured) detached, ready or a clear
error, the gateway's and the review page's URLs printed, the state in `.whaleid/up.json` (services.devtools.demo.system).

`--run` serves a training run (or `general`, the general identifier): exported and built into a Triton repository
under `.whaleid/up/` (cached by model id), and the S3 catalogue embedded with it into a new gallery version
(`whaleid gallery build --run`). Without `--run` the configured repository (setting model_repository) and the
current gallery are served as they are."""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)
LOG_FILE = "up.log"


def register(subparsers) -> None:
    up = subparsers.add_parser(
        "up", help="start the stack and every service detached (like `docker compose up -d`); print the URLs",
        description="Starts the embedded stack and the chain's services in the background, waits until they are "
                    "ready (or stops what it started and says what failed, with the log to read), prints the "
                    "gateway's and the review page's URLs and records the state in up.json beside the stack's run "
                    "dir. `whaleid down` stops it all.")
    up.add_argument("--run", help="serve this training run, or `general` (the general identifier): its Triton "
                                  "repository is built and the catalogue embedded with it (default: the configured "
                                  "repository and the current gallery)")
    up.add_argument("--catalogue", type=Path, metavar="DIR",
                    help="import this catalogue into S3 first (as `whaleid catalogue import DIR`)")
    up.add_argument("--config", help="settings TOML file")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each part (default 180)")
    up.set_defaults(func=cmd_up)

    down = subparsers.add_parser("down", help="stop what `whaleid up` (or `whaleid demo --keep-up`) started: the "
                                              "services first, then the stack")
    down.add_argument("--config", help="settings TOML file")
    down.set_defaults(func=cmd_down)


def say(message: str) -> None:
    print(message, flush=True)


def served_repository(run: str | None, home: Path, settings) -> Path:
    """The Triton repository to serve: `run`'s (exported and built under `home`, cached by model id) or the
    configured one."""
    from services.core.errors import ConfigError

    if run is None:
        repository = Path(settings.model_repository)
        if not repository.is_dir() or not any(repository.iterdir()):
            raise ConfigError(f"no Triton model repository at {repository}: pass --run RUN (or --run general), or "
                              f"build one with `whaleid model-repo build`")
        return repository
    from services.cli.main import TENSORFLOW_LOG, import_tensorflow_quietly
    from services.devtools.demo.model import cached_step, served_model_id
    from services.serving.model_repo.builder import build_repository
    from training.general import GENERAL, general_exports, member_exports, resolve_run

    import_tensorflow_quietly(TENSORFLOW_LOG)
    run_dir = Path(resolve_run(run))
    if run == GENERAL:
        exports = general_exports(run_dir)
        model_id = "general"
    else:
        model_id = served_model_id(run_dir)
        exports = cached_step(home / "exports" / model_id, f"exporting {model_id} to ONNX",
                              lambda out: _export(run_dir, out), say, stamp=str(run_dir.resolve()))
    tuning = run_dir / "tuning.json" if (run_dir / "tuning.json").is_file() else None
    members = [] if run == GENERAL else member_exports(tuning)  # what `whaleid evaluate` recommended with the run
    digest = hashlib.sha256(tuning.read_bytes()).hexdigest()[:12] if tuning else "-"
    return cached_step(home / "model_repository" / model_id, "building the Triton model repository",
                       lambda out: build_repository(exports, out, tuning, members=members), say,
                       stamp=f"{run_dir.resolve()} {exports} {digest}")


def _export(run_dir: Path, out: Path) -> None:
    from training.export import export_run

    export_run(run_dir, out)


def cmd_up(args: argparse.Namespace) -> int:
    from services.core.settings import load_settings
    from services.devtools.demo.system import check_not_up, logs_to_file, stderr_to, up_state_path

    began = time.monotonic()
    settings = load_settings(config_file=args.config)
    state_path = up_state_path(settings)
    check_not_up(state_path)
    home = state_path.parent / "up"
    logs_to_file(home / "logs" / LOG_FILE)
    with stderr_to(home / "logs" / LOG_FILE):  # TensorFlow's C++ lines while exporting and embedding
        return _up(args, settings, state_path, home, began)


def _up(args, settings, state_path: Path, home: Path, began: float) -> int:
    from services.devtools.demo.system import SERVICES, System

    repository = served_repository(args.run, home, settings)
    system = System(settings, Path(settings.run_dir), home / "logs", say, config=args.config)
    try:
        served = system.start_stack(repository, timeout=args.timeout)
        if args.catalogue is not None:
            _import_catalogue(args.catalogue, served)
        if args.run is not None:
            from services.curation.catalogue.gallery_build import publish_catalogue_gallery

            summary = publish_catalogue_gallery(served, Path(args.run) if args.run != "general" else None,
                                                progress=say, progress_bar=False)
            say(f"gallery {summary['version']} published and served ({summary['size']} embeddings of "
                f"{summary['individuals']} individuals, {summary['model_id']}, threshold {summary['threshold']:.3f})")
        names = SERVICES + (("webhooks",) if served.webhook_urls else ())
        system.start_services(names, timeout=args.timeout)
    except BaseException:
        say("whaleid up: stopping what it started")
        system.stop()
        raise
    system.write_state(state_path, "up")
    say(f"up in {time.monotonic() - began:.0f} s; state in {state_path}, logs in {home / 'logs'} and "
        f"{system.stack_dir / 'logs'}")
    say(f"gateway:     {system.gateway_url}   (whaleid upload PHOTO --latitude LAT --longitude LON finds it)")
    say(f"review page: {system.review_url}")
    workers = [f"--worker-url http://127.0.0.1:{s.web_port}" for s in system.services if s.name == "worker" and s.web_port]
    if workers:
        say(f"new models:  rebuild {repository} in place, then: whaleid model-repo reload {repository} "
            f"{' '.join(workers)}")
    say("stop it all: whaleid down")
    return 0


def _import_catalogue(src: Path, settings) -> None:
    from services.curation.catalogue.importer import import_catalogue
    from services.curation.catalogue.photo_bucket import CatalogueStore

    report = import_catalogue(src, CatalogueStore.from_settings(settings), progress=False)
    say(f"catalogue {src} imported ({report.added} added, {len(report.bad)} bad): {report.catalogue_photos} photos "
        f"of {report.individuals} individuals")


def cmd_down(args: argparse.Namespace) -> int:
    from services.core.settings import load_settings
    from services.devtools.demo.system import logs_to_file, stop_recorded, up_state_path

    path = up_state_path(load_settings(config_file=args.config))
    if not path.exists():
        print(f"nothing is up (no {path})", file=sys.stderr)
        return 0
    logs_to_file(path.parent / "up" / "logs" / LOG_FILE)
    result = stop_recorded(path, say)
    say(f"down in {result['seconds']:.1f} s")
    return 0
