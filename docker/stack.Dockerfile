# The compose stack's other services (docs/compose.md), for machines that cannot pull the
# official images: compose.yaml's default images for these three services are built here.
#   postgres    Debian's PostgreSQL 15, with the official image's conventions: POSTGRES_USER,
#               POSTGRES_PASSWORD and POSTGRES_DB make the cluster at the first start, data in
#               PGDATA=/var/lib/postgresql/data, port 5432, a pg_isready healthcheck.
#   prometheus  Debian's Prometheus, with the official image's conventions: config at
#               /etc/prometheus/prometheus.yml, data in /prometheus, port 9090, user nobody (65534).
#   mlflow      the MLflow tracking server with PostgreSQL's driver and nothing else (no torch):
#               requirements/mlflow-server.txt (the lock of pyproject's `mlflow-server` extra,
#               at dev's pins, so the same MLflow as training) from ./wheels/stack
#               (docker/wheels.sh stack), installed with --require-hashes.
# Debian packages come from the base image's own apt sources (docker/build-base.sh writes the
# mirror this machine's apt uses); versions are pinned to their upstream release, the Debian
# revision follows the release's updates.
ARG BASE_IMAGE=localhost/modalfuse-base:bookworm

FROM ${BASE_IMAGE} AS debian
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# No init system in a container: package scripts must not try to start services. No
# translated package descriptions either (a smaller `apt-get update`).
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
    && echo 'Acquire::Languages "none";' > /etc/apt/apt.conf.d/99no-translations

FROM debian AS postgres
ARG PG_MAJOR=15
# postgresql-common would make a default cluster on install: the entrypoint makes the one
# this image serves instead, from the POSTGRES_* variables, as the official image does.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         'postgresql-common=248*' >/dev/null \
    && sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' \
         /etc/postgresql-common/createcluster.conf \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         "postgresql-${PG_MAJOR}=${PG_MAJOR}.*" >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 0700 /var/lib/postgresql/data
COPY --chmod=0755 postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
USER postgres
WORKDIR /var/lib/postgresql
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
# Over TCP: the first start's private server (socket only) does not count as ready.
HEALTHCHECK --interval=5s --timeout=4s --start-period=30s --retries=5 \
    CMD ["/bin/bash", "-c", "pg_isready -q -h 127.0.0.1 -U \"${POSTGRES_USER:-postgres}\" -d \"${POSTGRES_DB:-${POSTGRES_USER:-postgres}}\""]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]

FROM debian AS prometheus
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         'prometheus=2.42.*' >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/* \
    && mkdir -p /prometheus \
    && chown nobody:nogroup /prometheus
USER 65534:65534
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
HEALTHCHECK --interval=15s --timeout=4s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/-/ready', timeout=3)"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

FROM ${BASE_IMAGE} AS mlflow
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Wheels only for this install; the bind mount keeps them out of the image's layers.
RUN --mount=type=bind,source=wheels/stack,target=/wheels \
    python3 -m venv /opt/venv \
    && pip install --no-index --find-links /wheels --require-hashes --no-deps \
         -r /wheels/requirements/mlflow-server.txt \
    && find /opt/venv -depth \( -name tests -o -name __pycache__ \) -type d -exec rm -rf {} + \
    && groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid mlflow --home-dir /mlartifacts --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts
USER 10001:10001
WORKDIR /mlartifacts
VOLUME ["/mlartifacts"]
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=5 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=3)"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
