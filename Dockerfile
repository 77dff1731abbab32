# syntax=docker/dockerfile:1
# The serving image: CPU TensorFlow, the app and the committed models; no training code.
# BASE_IMAGE lets the image be built from a local base where no registry is reachable.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml .
# The runtime dependencies are pyproject's, with the CPU-only TensorFlow build (same `tensorflow`
# module, no GPU libraries) so the image stays small.
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        | sed 's/^tensorflow\b/tensorflow-cpu/' > requirements.txt \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -r requirements.txt

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MODEL_DIR=/srv/models/cifar10
RUN groupadd --system app && useradd --system --gid app --no-create-home app
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
COPY app ./app
COPY models ./models
COPY pyproject.toml ./
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
# Settings come from the environment (see README); `python -m app` starts uvicorn with them.
CMD ["python3", "-m", "app"]
