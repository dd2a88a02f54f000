# distill-lab worker image: the package, CPU or CUDA torch, the PostgreSQL driver.
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TOKENIZERS_PARALLELISM=false
WORKDIR /app

RUN pip install "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY distill_lab ./distill_lab
COPY dashboards ./dashboards
COPY studies ./studies
COPY docker ./docker
# mlflow[auth]: the tracking server's basic-auth app (the compose stack's mlflow service).
RUN pip install ".[minilm,postgres]" "mlflow[auth]"

ENTRYPOINT ["distill-lab"]
CMD ["--help"]
