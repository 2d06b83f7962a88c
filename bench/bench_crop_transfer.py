"""What a crop costs between the worker and Triton: PNG (what the worker sent before) vs binary PPM (what it sends
to a build whose `image_formats` lists PPM), side by side in one run.

For photo-like crops of several sizes (a smooth random scene plus sensor noise, the hard case for PNG's
filters; real photos behave alike), it measures CPU milliseconds (process time, best of `--repeats` rounds, the
two formats interleaved) to encode in the worker (`services.core.imaging.encode_png` / `encode_ppm`) and to decode in
the served model (`decode_image(..., formats=TRANSFER_FORMATS)`), the bytes sent, and checks that both decode to
the identical pixels. Also the whole worker step for a photo with an uploader box: fetch aside, decode the
upload, crop, encode (`services.chain.worker.pipeline.prepare` + `PreparedSighting.payload`).
`python -m bench crop_transfer [--sizes 320x240,800x600,1600x1200] [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(seed)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(
        (width, height), Image.BILINEAR), dtype=np.int16)
    return np.clip(smooth + rng.integers(-6, 7, smooth.shape), 0, 255).astype(np.uint8)


def cpu_ms(fn, repeats: int) -> float:
    """Best-of-`repeats` process time of one call, in ms (calls per round chosen to last ~50 ms)."""
    fn()
    start = time.process_time()
    fn()
    single = max(time.process_time() - start, 1e-5)
    calls = max(1, min(50, int(0.05 / single)))
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls)
    return round(1000.0 * best, 3)


def main(argv: list[str]) -> dict:
    from PIL import Image

    from services.chain.worker.cropping import UploaderBox
    from services.chain.worker.pipeline import prepare
    from services.core.imaging import TRANSFER_FORMATS, decode_image, encode_png, encode_ppm
    from services.core.settings import load_settings
    from services.core.topics import SightingUploaded

    parser = argparse.ArgumentParser(prog="python -m bench crop_transfer")
    parser.add_argument("--sizes", default="320x240,800x600,1600x1200", help="crop sizes WxH, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    result: dict = {"crops": {}, "worker_step": {}}
    for width, height in sizes:
        pixels = photo_like(width, height)
        row = {}
        for name, encode in (("png", encode_png), ("ppm", encode_ppm)):
            data = encode(pixels)
            assert np.array_equal(decode_image(data, formats=TRANSFER_FORMATS), pixels), name
            row[name] = {"encode_ms": cpu_ms(lambda e=encode, p=pixels: e(p), args.repeats),
                         "decode_ms": cpu_ms(lambda d=data: decode_image(d, formats=TRANSFER_FORMATS), args.repeats),
                         "kilobytes": round(len(data) / 1000, 1)}
        png, ppm = row["png"], row["ppm"]
        row["png_over_ppm_cpu"] = round((png["encode_ms"] + png["decode_ms"])
                                        / (ppm["encode_ms"] + ppm["decode_ms"]), 1)
        result["crops"][f"{width}x{height}"] = row

    settings = load_settings(profile="local", environ={})

    class Objects:  # the fetched upload (the S3 GET is not what is compared)
        def __init__(self, data: bytes):
            self.data = data

        def fetch(self, bucket, key, max_bytes):
            return self.data

    for width, height in sizes:
        photo = photo_like(width * 2, height * 2, seed=1)  # the crop is the middle quarter of a photo twice its size
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
        box = [width // 2, height // 2, width // 2 + width, height // 2 + height]
        event = SightingUploaded(sighting_id="s", bucket=settings.sightings_bucket, key="uploads/s.jpg",
                                 metadata={"crop_box": box})
        objects = Objects(buffer.getvalue())
        def worker_step(formats, event=event, objects=objects):
            return prepare(event, objects, settings, [UploaderBox()]).payload(formats)

        step = {name: cpu_ms(lambda f=formats: worker_step(f), args.repeats)
                for name, formats in (("png", frozenset()), ("ppm", frozenset(TRANSFER_FORMATS)))}
        step["png_over_ppm"] = round(step["png"] / step["ppm"], 1)
        result["worker_step"][f"{width * 2}x{height * 2} photo, {width}x{height} box"] = step
    return result
