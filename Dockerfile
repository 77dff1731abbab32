# syntax=docker/dockerfile:1
# The serving image: the app, the committed models and one runtime for the SavedModel; no
# training code. BACKEND=openvino (default) is the slim image, without TensorFlow;
# `--build-arg BACKEND=tensorflow` serves with TensorFlow's CPU-only build instead.
# BASE_IMAGE lets the image be built from a local base where no registry is reachable.
ARG BASE_IMAGE=python:3.11-slim
ARG BACKEND=openvino

FROM ${BASE_IMAGE} AS build
ARG BACKEND
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml deploy/image_requirements.py ./
# pyproject's runtime dependencies, with the runtime BACKEND needs in place of `tensorflow`.
RUN python3 image_requirements.py "$BACKEND" > requirements.txt \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -r requirements.txt

FROM ${BASE_IMAGE}
ARG BACKEND
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    INFERENCE_BACKEND=${BACKEND} \
    MODEL_DIR=/srv/models/cifar10
RUN groupadd --system app && useradd --system --gid app --no-create-home app
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
COPY app ./app
COPY models ./models
COPY pyproject.toml ./
USER app
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
# Settings come from the environment (see README); `python -m app` starts uvicorn with them.
CMD ["python3", "-m", "app"]
