"""`whaleid model-repo build|validate|reload|push|pull`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.serving.model_repo.configs import TARGETS, BuildOptions


def register(subparsers) -> None:
    """Add this stage's sub-commands to `whaleid`."""
    repo = subparsers.add_parser("model-repo", help="build, validate, push or pull the Triton model repository")
    commands = repo.add_subparsers(dest="model_repo_command", metavar="COMMAND", required=True)
    defaults = BuildOptions()

    build = commands.add_parser("build", help="write a Triton repository from exports and the tuning file",
                                description="preprocess + one embedder per export + blend + ensemble; refuses "
                                            "missing models, checksum mismatches and wrong shapes")
    build.add_argument("--exports", type=Path,
                       help="exports directory (whaleid export --out); default: the general identifier (no training, "
                            "training/general.py), exported on first use")
    build.add_argument("--tuning", type=Path, help="tuning.json with blend weights (default: equal weights)")
    build.add_argument("--out", type=Path, help="repository directory (default: settings.model_repository)")
    build.add_argument("--detector", type=Path, metavar="DIR|cam",
                       help="a crop detector export (whaleid detector export) to serve as the model `detector`, "
                            "or `cam`: the label-free CAM localiser (exported on first use to runs/cam-detector)")
    build.add_argument("--target", choices=TARGETS, default=defaults.target,
                       help="cpu: python backend + onnxruntime; gpu: Triton's onnxruntime_onnx platform")
    build.add_argument("--tensorrt", action="store_true", help="gpu target: TensorRT FP16 accelerator")
    build.add_argument("--lean", action="store_true",
                       help="cpu target: one python hop (decode + resize once, uint8) running one fused ONNX graph "
                            "of every embedder + flip TTA + blend (services.serving.model_repo.lean), same ensemble contract")
    build.add_argument("--lean-instances", type=int, default=defaults.lean_instances,
                       help="--lean: pipeline instances (default 2: one decodes while another runs onnxruntime)")
    build.add_argument("--lean-intra-op-threads", type=int, default=defaults.lean_intra_op_threads,
                       help="--lean: onnxruntime threads per pipeline instance (default 1)")
    build.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    build.add_argument("--max-queue-delay-us", type=int, default=defaults.max_queue_delay_us,
                       help="dynamic batching delay of the members")
    build.add_argument("--embedder-instances", type=int, default=defaults.embedder_instances)
    build.add_argument("--preprocess-instances", type=int, default=defaults.preprocess_instances)
    build.add_argument("--intra-op-threads", type=int, default=defaults.intra_op_threads,
                       help="onnxruntime threads per cpu embedder instance (0: onnxruntime's default)")
    build.set_defaults(func=_build)

    validate = commands.add_parser("validate", help="check a built repository (files, checksums, shapes)")
    validate.add_argument("repository", nargs="?", type=Path, help="default: settings.model_repository")
    validate.set_defaults(func=_validate)

    reload = commands.add_parser("reload", help="(re)load a rebuilt repository into the running Triton")
    reload.add_argument("repository", nargs="?", type=Path, help="default: settings.model_repository")
    reload.add_argument("--url", help="Triton gRPC address (default: settings.triton_grpc_url, i.e. the stack)")
    reload.add_argument("--worker-url", action="append", default=[], metavar="URL",
                        help="a running worker's Faust web address (http://host:port, repeatable): told to read the "
                             "served model now (POST /model/reload/ with the settings' admin token); without it a "
                             "worker notices within 5 s")
    reload.set_defaults(func=_reload)

    for name, verb in (("push", "upload a built repository to"), ("pull", "download a repository from")):
        store = commands.add_parser(name, help=f"{verb} the model store (S3)")
        store.add_argument("repository", nargs="?", type=Path, help="default: settings.model_repository")
        store.add_argument("--bucket", help="default: settings.models_bucket")
        store.add_argument("--prefix", default="model_repository", help="key prefix (default model_repository)")
        store.set_defaults(func=_push if name == "push" else _pull)


def _repository(path: Path | None) -> Path:
    if path is not None:
        return path
    from services.core.settings import load_settings

    return load_settings().model_repository


def _build(args: argparse.Namespace) -> int:
    from services.serving.model_repo.builder import build_repository

    options = BuildOptions(target=args.target, tensorrt=args.tensorrt, max_batch_size=args.max_batch_size,
                           max_queue_delay_us=args.max_queue_delay_us, embedder_instances=args.embedder_instances,
                           preprocess_instances=args.preprocess_instances, intra_op_threads=args.intra_op_threads,
                           max_pixels=_max_pixels(), lean=args.lean, lean_instances=args.lean_instances,
                           lean_intra_op_threads=args.lean_intra_op_threads)
    out = _repository(args.out)
    if args.exports is None:
        from services.cli.main import TENSORFLOW_LOG, import_tensorflow_quietly
        from training.general import general_exports

        import_tensorflow_quietly(TENSORFLOW_LOG)

        args.exports = general_exports()
    members = []
    if args.tuning is not None:  # the tuning's members (the general identifier `evaluate` recommended)
        from services.core.identification.tuning import Tuning

        if Tuning.load(args.tuning).members:
            from services.cli.main import TENSORFLOW_LOG, import_tensorflow_quietly
            from training.general import member_exports

            import_tensorflow_quietly(TENSORFLOW_LOG)
            members = member_exports(args.tuning)
    record = build_repository(args.exports, out, args.tuning, options, detector=args.detector, members=members)
    print(f"{out}: build {record['build_id']} ({record['target']}), models: {', '.join(record['models'])}; "
          f"{record['weights_source']}")
    print("serving " + " + ".join(f"{e['model_id']} {e['weight']:.2f}" for e in record["embedders"])
          + f": EMBEDDING {record['embedding_size']}-d")
    return 0


def _max_pixels() -> int:
    from services.core.settings import load_settings

    return load_settings().max_image_pixels


def _validate(args: argparse.Namespace) -> int:
    from services.serving.model_repo.validation import validate_repository

    repository = _repository(args.repository)
    record = validate_repository(repository)
    print(f"{repository}: valid (build {record['build_id']}, {len(record['embedders'])} embedder(s))")
    return 0


def _reload(args: argparse.Namespace) -> int:
    from services.core.errors import ConfigError
    from services.core.settings import load_settings
    from services.serving.model_repo.serving import reload_models

    url = args.url or load_settings().triton_grpc_url
    if not url:
        raise ConfigError("no Triton address: start the stack (whaleid stack up) or pass --url host:port")
    names = reload_models(_repository(args.repository), url)
    print(f"loaded into {url}: {', '.join(names)}")
    return tell_workers(args.worker_url, load_settings())


def tell_workers(worker_urls: list[str], settings) -> int:
    """Each worker reads the served model now; 1 when one of them could not be told (it still notices by its
    timer)."""
    from services.core.errors import RepositoryError
    from services.serving.model_repo.serving import admin_token, tell_worker

    failed = 0
    for worker_url in worker_urls:
        try:
            print(f"worker {worker_url}: tags {tell_worker(worker_url, admin_token(settings))}")
        except RepositoryError as exc:
            print(f"{exc} (it reads the model again within 5 s)", file=sys.stderr)
            failed = 1
    return failed


def _push(args: argparse.Namespace) -> int:
    from services.serving.model_repo.repository_builds import push

    repository = _repository(args.repository)
    uri = push(repository, args.bucket, args.prefix)
    print(f"{repository} -> {uri}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from services.serving.model_repo.repository_builds import pull

    repository = _repository(args.repository)
    record = pull(repository, args.bucket, args.prefix)
    print(f"{repository}: pulled build {record['build_id']}")
    return 0
