# image: whaleid
# One image for every Python service: `whaleid serve gateway|bridge|worker|matcher`, `whaleid reindex`
# (the nightly CronJob) and `whaleid model-repo pull` (Triton's initContainer). Triton itself runs the NGC image.
# It installs the core only (pyproject.toml `dependencies`): no TensorFlow, no embedded servers. The core install
# is 353 MB as a venv here, against 3.3 GB for `make install` (every extra). Training and `gallery build` need
# the [training] extra: build a training image with `pip install '.[training]'`.
# Build from the repository root:  docker build -f deploy/docker/whaleid.Dockerfile -t whaleid:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/whaleid
COPY pyproject.toml README.md ./
COPY services ./services
COPY training ./training
COPY model_repo ./model_repo
# `model-repo build` reads the models' config.pbtxt templates and python-backend sources from the installed package
# (package data model_repo/) and vendors services/core/imaging.py + services/core/identification/vectors.py into the
# repository, so nothing of the checkout is needed at run time; the check below fails the image build if they are missing.
RUN /opt/whaleid/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/whaleid/bin/pip install --no-cache-dir . \
 && cd / && /opt/whaleid/bin/python -c "from services.serving.model_repo import builder, templates, vendor; \
[builder.template_source(t) for t in builder.VENDORED]; [templates.config_template(m) for m in templates.MODELS]; [vendor.vendored_source(v) for v in (vendor.IMAGING, vendor.VECTORS)]"

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 whaleid
COPY --from=build /opt/whaleid /opt/whaleid
ENV PATH=/opt/whaleid/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    WHALEID_PROFILE=production \
    WHALEID_GATEWAY_HOST=0.0.0.0 \
    WHALEID_METRICS_HOST=0.0.0.0 \
    WHALEID_RUN_DIR=/tmp/whaleid
USER 10001
# gateway HTTP (its /metrics too unless WHALEID_GATEWAY_METRICS_PORT, 9400 in k8s/), the stages' /metrics
# (settings.metrics_port_base + stage offset). run_dir under /tmp: the manifests mount the root file system read-only.
EXPOSE 8080 9400 9401 9402 9403 9404 9405
ENTRYPOINT ["whaleid"]
CMD ["--help"]
