#!/usr/bin/env bash
# System packages the test suite needs beyond pip: installed only when missing, so a
# developer's second `make test` costs nothing. Runs as root in CI; uses sudo otherwise.
set -euo pipefail
need=()
# PostgreSQL's server binaries are not on PATH in Debian: look where the package puts them.
# The tests start their own server (initdb + pg_ctl in a temporary directory), never this one.
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    need+=(postgresql)
fi
# PgBouncer (Debian installs it in /usr/sbin): the tests run their own in front of their server.
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)  # joins the test Redis Cluster
command -v node >/dev/null 2>&1 || need+=(nodejs)  # runs the shipped Auth0 Action in tests
if ((${#need[@]})); then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing system packages: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
