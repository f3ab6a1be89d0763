# Image for every bookaudit service in docker-compose.yml (init steps, capture, consumers, the
# sample day): the entrypoint is `bookaudit`, so each service's command is a bookaudit command line.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what `pip install .` needs, so edits to tests or CI files do not invalidate the layer.
COPY pyproject.toml README.md ./
# src/bookaudit links to the pipeline folders at the top, so they come along as they are.
COPY src ./src
COPY cdc ./cdc
COPY consumers ./consumers
COPY schemas ./schemas
COPY sql ./sql
RUN pip install . && useradd --system --no-create-home bookaudit

USER bookaudit
ENTRYPOINT ["bookaudit"]
CMD ["--help"]
