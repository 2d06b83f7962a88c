"""`whaleid bench triton` (= `python -m bench triton`): the ensemble in-process (onnxruntime) vs Triton over gRPC.

Defaults: untrained b0-tiny exports unless --exports or WHALEID_BENCH_EXPORTS points at real ones
(`whaleid export --out DIR`), e.g. `whaleid bench triton --exports runs/exports --requests 200 --json`.

`--cpu-per-crop`: instead, Triton's own CPU (the server and its python-backend stubs, from /proc) per crop by
request batch size, the standard layout (preprocess -> embedder -> blend, what the stack serves) and the lean one
side by side (both servers up, rounds alternating): why Triton costs more per sighting in the chain than alone
when the worker's batches are smaller than the raw client's. Measured here (`python -m bench triton
--cpu-per-crop`, one b0-tiny embedder, medians of 3 rounds, 127 s): standard 2.80 / 3.01 / 3.82 / 7.63 ms per crop
at batch 16 / 8 / 4 / 1 (1.07x / 1.36x / 2.72x batch 16's), lean 2.09 / 2.40 / 2.75 / 4.67 (0.61-0.80x the
standard layout's). A separate probe: one model-config call (the worker's model_parameters) costs ~0.4 ms of
Triton CPU, two per batch of 16 +0.03-0.13 ms per crop.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.triton_serving import benchmark

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("bench.triton")


def main(argv: list[str]) -> dict:
    from services.core.errors import ConfigError

    parser = argparse.ArgumentParser(prog="whaleid bench triton",
                                     description="in-process onnxruntime ensemble (the fastest of several "
                                                 "onnxruntime settings) vs Triton over gRPC (batch 1 and "
                                                 "concurrent clients), alternating rounds, medians")
    parser.add_argument("--repository", type=Path, help="a built repository (default: build one)")
    parser.add_argument("--exports", type=Path, default=os.environ.get("WHALEID_BENCH_EXPORTS") or None,
                        help="exports to build the repository from (default: untrained tiny models)")
    parser.add_argument("--url", help="a Triton already serving --repository (default: start one)")
    parser.add_argument("--requests", type=int, default=120, help="requests per measurement (default 120)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported (default 3)")
    parser.add_argument("--plot", type=Path, default=RESULTS / "triton.png", help="PNG of the comparison")
    parser.add_argument("--layout", choices=("lean", "standard"), default="lean",
                        help="repository layout built when none is given: lean (default: one python hop, one fused "
                             "graph) or standard (preprocess -> embedder_* -> blend)")
    parser.add_argument("--cpu-per-crop", action="store_true",
                        help="only Triton's CPU per crop by batch size, standard vs lean layout (see above)")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 8, 4, 1], help="--cpu-per-crop batch sizes")
    args = parser.parse_args(argv)
    if args.cpu_per_crop:
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        return cpu_per_crop(args.exports and Path(args.exports), args.batches, args.requests * 8, max(2, args.rounds))
    if args.url and not args.repository:
        raise ConfigError("--url needs --repository: the repository that Triton serves (for the direct baseline)")
    if not logging.getLogger().handlers:  # progress lines when run by `python -m bench`
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return benchmark(args.repository, args.exports and Path(args.exports), args.url, plot_path=args.plot,
                     requests=args.requests, concurrency=args.concurrency, rounds=args.rounds,
                     lean=args.layout == "lean")


def cpu_per_crop(exports: Path | None, batches: list[int], crops: int, rounds: int) -> dict:
    """Triton's CPU ms per crop for each layout and batch size: both layouts served at once, rounds alternating
    over layouts and batch sizes, medians; the same JPEG crops as the latency benchmark."""
    from bench.bench_chain import process_tree_cpu
    from bench.triton_serving import bench_images, tiny_exports
    from services.devtools.stack.triton import launch_triton
    from services.serving.model_repo.builder import build_repository
    from services.serving.model_repo.configs import BuildOptions
    from services.serving.triton_client import EmbeddingClient

    layouts = ("standard", "lean")
    images = bench_images(32)
    with tempfile.TemporaryDirectory(prefix="whaleid-bench-triton-cpu-") as scratch, ExitStack() as stack:
        scratch = Path(scratch)
        exports = exports or tiny_exports(scratch / "exports", count=1)  # one embedder, as the chain benchmark
        servers, clients = {}, {}
        for layout in layouts:
            build_repository(exports, scratch / layout, options=BuildOptions(lean=layout == "lean"))
            servers[layout] = stack.enter_context(launch_triton(scratch / layout, scratch / f"triton-{layout}",
                                                                model_control="none"))
        for layout, server in servers.items():
            server.wait_healthy(180)
            clients[layout] = stack.enter_context(EmbeddingClient(server.grpc, timeout_s=60))
            clients[layout].embed(images[:max(batches)])  # warm up
        per_crop: dict[str, dict[int, list[float]]] = {layout: {b: [] for b in batches} for layout in layouts}
        for round_index in range(rounds):
            for layout in layouts:
                for batch in batches:
                    before = process_tree_cpu({"triton": servers[layout].pid})["triton"]
                    sent = 0
                    while sent < crops:
                        clients[layout].embed([images[(sent + k) % len(images)] for k in range(batch)])
                        sent += batch
                    used = process_tree_cpu({"triton": servers[layout].pid})["triton"] - before
                    per_crop[layout][batch].append(1000.0 * used / sent)
            log.info("round %d/%d: %s", round_index + 1, rounds,
                     {layout: {b: round(v[-1], 2) for b, v in rows.items()} for layout, rows in per_crop.items()})
    medians = {layout: {str(b): round(statistics.median(v), 3) for b, v in rows.items()}
               for layout, rows in per_crop.items()}
    largest = str(max(batches))
    return {
        "triton_cpu_ms_per_crop": medians,
        # what a chain whose Triton calls carry `batch` crops pays per crop over the raw client's largest batches
        "over_largest_batch": {layout: {b: round(ms / rows[largest], 3) for b, ms in rows.items()}
                               for layout, rows in medians.items()},
        "lean_over_standard": {b: round(medians["lean"][b] / medians["standard"][b], 3) for b in medians["lean"]},
        "crops_per_measure": crops, "rounds": rounds, "cpu_count": os.cpu_count(),
        "per_round": {layout: {str(b): [round(x, 3) for x in v] for b, v in rows.items()}
                      for layout, rows in per_crop.items()},
    }
