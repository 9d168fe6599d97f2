# syntax=docker/dockerfile:1
#
# One image for the code location (the chart's gRPC user deployment), its run and step pods, the
# Dagster UI behind the access gate, the failover daemon and the event ingress (docs/kubernetes.md):
#
#   docker build -t <registry>/agent-pipelines:<tag> .
#
# The default command serves the code location; every other process is chosen by the pod spec
# (`agent-pipelines webserver ...`, `agent-pipelines daemon ...`, `agent-pipelines ingress ...`).
# Plain `dagster-webserver` is in the image too, but it has no sign-in: serve the UI with
# `agent-pipelines webserver`, which runs the same app behind the access gate.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The project is built from /tmp/src, which is removed afterwards: the code runs from
# site-packages only, never from a second copy in the working directory.
WORKDIR /tmp/src

# Dependencies first, read from pyproject.toml, so that a change to the code alone does not
# reinstall Dagster, pandas and pyarrow.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install -r requirements.txt

# The project itself (the packages pyproject.toml lists), installed with `pip install .`.
COPY agent_pipelines ./agent_pipelines
COPY assets ./assets
COPY jobs ./jobs
COPY resources ./resources
COPY sensors ./sensors
RUN pip install --no-deps . \
    && cd / && rm -rf /tmp/src

WORKDIR /opt/agent-pipelines

# The example catalog. On Kubernetes a ConfigMap is mounted over this directory.
COPY catalog /opt/agent-pipelines/catalog

# A user of its own, with a home of its own; DAGSTER_HOME is writable by it (the chart and our
# Deployments mount dagster.yaml into it).
RUN groupadd --system --gid 10001 agent \
    && useradd --system --uid 10001 --gid agent --create-home --home-dir /home/agent --shell /usr/sbin/nologin agent \
    && mkdir -p /opt/dagster/dagster_home \
    && chown -R agent:agent /opt/dagster/dagster_home

ENV AGENT_PIPELINES_CATALOG=/opt/agent-pipelines/catalog \
    DAGSTER_HOME=/opt/dagster/dagster_home

USER 10001:10001

# 3030: the code server (gRPC); 3000: the UI behind the access gate; 8788: the event ingress.
EXPOSE 3030 3000 8788

CMD ["dagster", "code-server", "start", "-m", "agent_pipelines.definitions", "-h", "0.0.0.0", "-p", "3030"]
