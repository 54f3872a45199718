# tokenmeter for docker-compose and production: the enforcer, migrations and the demo traffic.
# The app side (instrumentation) is installed into the apps' own environments instead.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/tokenmeter
COPY pyproject.toml README.md ./
COPY tokenmeter ./tokenmeter
# server: the enforcer and migrations against a ClickHouse server; coordination: enforcer
# replicas sharing headroom through Keeper; otlp and tokenizers-offline: the demo traffic
# generator's instrumentation, counting offline.
RUN pip install '.[server,coordination,otlp,tokenizers-offline]' \
    && useradd --system --home-dir /var/lib/tokenmeter --create-home tokenmeter
USER tokenmeter
ENV XDG_DATA_HOME=/var/lib/tokenmeter
EXPOSE 9400
ENTRYPOINT ["tokenmeter"]
CMD ["--help"]
