"""A contact sheet (PNG) of the individuals with the most photos, boxes drawn: to see what the data looks like."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

BOX_COLOURS = {"fullbody": (60, 230, 60), "yolov5": (255, 150, 0)}


def write_preview(out: Path, samples: dict, box_rows, individuals: int = 5, per_individual: int = 6) -> Path:
    """samples: individual_id -> [(split, image, tight_box)]. Rows = individuals, columns = their photos."""
    boxes: dict[str, list] = {}
    for image, source, *box in box_rows:
        boxes.setdefault(image, []).append((source, box))
    chosen = sorted(samples.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:individuals]
    if not chosen:
        return out / "preview.png"
    first = Image.open(out / f"{chosen[0][1][0][0]}_images" / chosen[0][1][0][1])
    cell_w, cell_h = first.size
    sheet = Image.new("RGB", (cell_w * per_individual, cell_h * len(chosen)), (255, 255, 255))
    for row, (_, photos) in enumerate(chosen):
        for column, (split, image, _) in enumerate(photos[:per_individual]):
            with Image.open(out / f"{split}_images" / image) as photo:
                cell = photo.convert("RGB")
            draw = ImageDraw.Draw(cell)
            for source, box in boxes.get(image, []):
                draw.rectangle(box, outline=BOX_COLOURS.get(source, (255, 0, 255)))
            sheet.paste(cell, (column * cell_w, row * cell_h))
    path = out / "preview.png"
    sheet.save(path)
    return path
