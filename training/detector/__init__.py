"""The crop detector: one box per photo, the main animal's, with a score.

    model.py    pretrained EfficientNet-Lite feature map -> small head -> box (normalised x0 y0 x1 y1) + score
    data.py     synthetic scenes (training.synth.scenes) -> model inputs and targets; IoU
    train.py    `whaleid detector train --out RUN`: the backbone frozen, its features computed once, the head fitted
    export.py   `whaleid detector export RUN`: ONNX (tf2onnx, parity-checked) + detector.json
    cli.py      the `whaleid detector` sub-commands

Served by the Triton model `detector` (model_repo/detector/, `whaleid model-repo build
--detector EXPORT`), which the worker uses whenever Triton has it loaded (services/chain/worker/cropping.py).
"""
