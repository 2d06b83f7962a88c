# image: whaleid-triton
# Triton for GPU nodes: NGC's image (onnxruntime + TensorRT + python backends) plus what the python-backend models
# of `whaleid model-repo build` import that NGC's image lacks: Pillow, at the version the repository is built
# with (decoding and resizing are byte-identical to the offline path only with the same Pillow; the preprocess
# model warns at load when they differ). numpy comes with the image. tests/unit/test_deploy.py checks that the pin
# below is pyproject.toml's.
# Build:  docker build -f deploy/docker/triton.Dockerfile -t whaleid-triton:0.1.0 deploy/docker
# (Instead of a derived image, Triton's EXECUTION_ENV_PATH can point each python model at a conda-pack'ed
# environment holding the same packages.)
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.08-py3
FROM ${TRITON_IMAGE}
ARG PILLOW_VERSION=13.0.0
RUN python3 -m pip install --no-cache-dir "pillow==${PILLOW_VERSION}" \
 && python3 -c "import PIL, numpy; print('Pillow', PIL.__version__, 'numpy', numpy.__version__)"
