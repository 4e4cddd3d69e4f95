#!/usr/bin/env bash
# Install what policyc needs from the distribution when it is missing: a PostgreSQL server with
# PL/Python 3, its client tools (psql, pg_dump, pgbench), PgBouncer (for the benchmarks), and the
# other clients the tests drive through the proxy: Node.js with npm (node-postgres) and a JDK
# with the distribution's PostgreSQL JDBC driver (tests/test_clients_other.py), and HAProxy (the
# TCP load balancer in front of several proxies, tests/test_proxy_instances.py).
# Debian/Ubuntu only; elsewhere it says what to install. Idempotent and quiet when all is there.
set -euo pipefail

have_server() { ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; }
have_plpython() { ls /usr/lib/postgresql/*/lib/plpython3.so >/dev/null 2>&1; }
have_tools() { command -v psql >/dev/null && command -v pgbench >/dev/null && command -v pgbouncer >/dev/null; }
have_postgres() { have_server && have_plpython && have_tools; }
# `java File.java` compiles in memory: it needs a JDK (jdk.compiler), not only a JRE.
JDBC_JAR=/usr/share/java/postgresql.jar
have_clients() { command -v node >/dev/null && command -v npm >/dev/null && command -v java >/dev/null &&
    command -v javac >/dev/null && [ -f "$JDBC_JAR" ]; }
# HAProxy balances agent connections over several proxy instances (docs/deployment.md).
have_balancer() { command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ]; }

if have_postgres && have_clients && have_balancer; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "system-deps: install PostgreSQL (server, client, PL/Python 3), PgBouncer, Node.js with npm," \
        "a JDK (java + javac), the PostgreSQL JDBC driver ($JDBC_JAR) and HAProxy, then retry" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "system-deps: need root (or sudo) to apt-get install postgresql, postgresql-plpython3," \
            "nodejs, npm, default-jdk-headless, libpostgresql-jdbc-java and haproxy" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if ! have_clients; then
    clients=()
    command -v node >/dev/null || clients+=(nodejs)
    # a Node.js from elsewhere (e.g. NodeSource) ships its own npm and conflicts with Debian's
    command -v npm >/dev/null || clients+=(npm)
    { command -v java >/dev/null && command -v javac >/dev/null; } || clients+=(default-jdk-headless)
    [ -f "$JDBC_JAR" ] || clients+=(libpostgresql-jdbc-java)
    $SUDO apt-get install -y -qq "${clients[@]}" >/dev/null
    echo "system-deps: installed ${clients[*]}"
fi
if ! have_balancer; then
    # Debian enables its service, which serves nothing until /etc/haproxy/haproxy.cfg says so;
    # the tests run their own haproxy with their own configuration
    $SUDO apt-get install -y -qq haproxy >/dev/null
    echo "system-deps: installed HAProxy"
fi
if have_postgres; then
    exit 0
fi
# The distribution's default major version: the postgresql metapackage depends on postgresql-NN.
major=$(apt-cache depends postgresql 2>/dev/null | sed -n 's/.*Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -n1)
if [ -z "$major" ]; then
    echo "system-deps: cannot tell the distribution's PostgreSQL version (apt-cache depends postgresql)" >&2
    exit 1
fi
$SUDO apt-get install -y -qq "postgresql-$major" "postgresql-client-$major" \
    "postgresql-plpython3-$major" pgbouncer >/dev/null
# Debian starts a system cluster on install; policyc never uses it (it runs its own clusters).
echo "system-deps: installed PostgreSQL $major with PL/Python 3 and PgBouncer"
