#!/bin/sh
# Entry point of the locally built PostgreSQL image. It understands the parts of the official
# image's interface the tests use: `postgres [-c k=v ...]` as command, PGDATA, trust auth for
# connections through the published port (test-only image).
set -e
PGDATA=${PGDATA:-/var/lib/postgresql/data}
if [ "${1:-postgres}" != postgres ]; then
    exec "$@"
fi
[ "$#" -gt 0 ] && shift
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    su postgres -s /bin/sh -c "initdb -D '$PGDATA' -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null"
    echo "host all all all trust" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
fi
# setpriv execs in place, so postgres is PID 1 and receives docker's signals directly.
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" "$@"
