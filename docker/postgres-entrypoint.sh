#!/usr/bin/env bash
# Entrypoint of docker/stack.Dockerfile's postgres image, with the official image's contract:
# on the first start (an empty PGDATA) make the cluster with POSTGRES_USER (default postgres)
# and POSTGRES_PASSWORD (required), password logins over TCP (scram-sha-256), and the
# database POSTGRES_DB (default: the user's name); then run the server on all addresses.
set -euo pipefail

if [ "${1:-}" = postgres ]; then
    : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD, the password of POSTGRES_USER}"
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        echo "first start: initdb in $PGDATA for user '$user', database '$db'"
        pwfile=$(mktemp)
        trap 'rm -f "$pwfile"' EXIT
        printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
        initdb -D "$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 \
            --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
        rm -f "$pwfile"
        printf "host all all all scram-sha-256\n" >> "$PGDATA/pg_hba.conf"
        printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
        if [ "$db" != postgres ]; then
            # A private server on the socket only: nothing can connect before the database exists.
            pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
            psql -v ON_ERROR_STOP=1 -q --username="$user" --dbname=postgres \
                --set=db="$db" <<'SQL'
CREATE DATABASE :"db";
SQL
            pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
        fi
        echo "first start: done"
    fi
    exec postgres -D "$PGDATA" "${@:2}"
fi
exec "$@"
