#!/bin/sh
# Entry point of the locally built PostgreSQL image (no registry: see scripts/test-infra.sh).
# It understands the parts of the official image's interface this project uses:
#   - `postgres [-c k=v ...]` as command (anything else is exec'd as is), PGDATA;
#   - trust auth, also for connections through a published port (test/dev-only image);
#     POSTGRES_PASSWORD, if set, becomes the superuser's password, but auth stays trust;
#   - on first start, after initdb: `*.sql` files of /docker-entrypoint-initdb.d are run with
#     psql (as postgres, ON_ERROR_STOP) and `*.sh` files are executed, in name order, by a
#     temporary server listening on the Unix socket only — so, as with the official image,
#     nothing can connect over TCP (healthchecks with `-h 127.0.0.1`) before they are done.
set -e
PGDATA=${PGDATA:-/var/lib/postgresql/data}
INITDB_DIR=/docker-entrypoint-initdb.d
if [ "${1:-postgres}" != postgres ]; then
    exec "$@"
fi
[ "$#" -gt 0 ] && shift
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        pwfile=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
        chown postgres "$pwfile"
    fi
    as_postgres initdb -D "$PGDATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        ${pwfile:+--pwfile="$pwfile"} >/dev/null
    [ -n "$pwfile" ] && rm -f "$pwfile"
    echo "host all all all trust" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"

    # Only start the temporary server when there is something to run: keeps plain starts fast.
    if [ -n "$(find "$INITDB_DIR" -maxdepth 1 \( -name '*.sql' -o -name '*.sh' \) 2>/dev/null)" ]; then
        as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        for f in "$INITDB_DIR"/*; do
            case "$f" in
                *.sql)
                    echo "postgres-entrypoint: running $f"
                    as_postgres psql -v ON_ERROR_STOP=1 -X -q -U postgres -d postgres -f "$f"
                    ;;
                *.sh)
                    echo "postgres-entrypoint: running $f"
                    as_postgres sh "$f"
                    ;;
                *) if [ -e "$f" ]; then echo "postgres-entrypoint: ignoring $f"; fi ;;
            esac
        done
        as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
        echo "postgres-entrypoint: init scripts done"
    fi
fi
# setpriv execs in place, so postgres is PID 1 and receives docker's signals directly.
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" "$@"
