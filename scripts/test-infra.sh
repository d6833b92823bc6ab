#!/usr/bin/env bash
# Prepares a machine with no container registry for the integration tests.
#
#   scripts/test-infra.sh            # everything: docker engine, PostgreSQL image, broker image
#   scripts/test-infra.sh engine     # only make sure a Docker engine answers
#   scripts/test-infra.sh postgres   # engine + local PostgreSQL image (debootstrap, no pull)
#   scripts/test-infra.sh broker     # engine + local Kafka-compatible broker image (tansu,
#                                    # embedded in our own `sagaflow` binary: built once)
#   scripts/test-infra.sh env        # print the variables that point the harness at them
#
# Idempotent: every step checks whether its result already exists and skips itself.
# Progress goes to stderr; `env` prints `export NAME=value` lines on stdout only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${SAGAFLOW_INFRA_CACHE:-/var/cache/sagaflow-infra}
PG_IMAGE=${SAGAFLOW_LOCAL_POSTGRES_IMAGE:-local/sagaflow-postgres:15}
BROKER_REPO=local/sagaflow-broker
PROFILE=${SAGAFLOW_BROKER_PROFILE:-debug}

step() { printf '[test-infra %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

engine() {
    if docker info >/dev/null 2>&1; then
        step "docker engine answers"
        return
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        step "installing docker.io (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq docker.io >&2
    fi
    step "starting dockerd (vfs storage, no iptables)"
    mkdir -p /var/log
    nohup dockerd --iptables=false --storage-driver=vfs >/var/log/sagaflow-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        if docker info >/dev/null 2>&1; then
            step "docker engine is up"
            return
        fi
        sleep 1
    done
    step "dockerd did not answer within 60 s; see /var/log/sagaflow-dockerd.log"
    tail -n 30 /var/log/sagaflow-dockerd.log >&2 || true
    exit 1
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

postgres_image() {
    engine
    if have_image "$PG_IMAGE"; then
        step "image $PG_IMAGE exists"
        return
    fi
    local rootfs=$CACHE/rootfs-postgres
    if [ ! -x "$rootfs/usr/lib/postgresql/15/bin/postgres" ]; then
        if ! command -v debootstrap >/dev/null 2>&1; then
            step "installing debootstrap (apt)"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >&2
            apt-get install -y -qq debootstrap >&2
        fi
        local mirror
        mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        if [ -z "$mirror" ]; then
            mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
        fi
        [ -n "$mirror" ] || { step "no Debian mirror configured in /etc/apt"; exit 1; }
        step "debootstrap bookworm + postgresql-15 into $rootfs (about 2-3 min)"
        rm -rf "$rootfs"
        mkdir -p "$CACHE"
        debootstrap --variant=minbase --include=postgresql-15 bookworm "$rootfs" "$mirror" \
            > "$CACHE/debootstrap.log" 2>&1 || {
            tail -n 30 "$CACHE/debootstrap.log" >&2
            exit 1
        }
    fi
    step "writing entrypoint compatible with the official postgres image"
    install -m 0755 "$ROOT/scripts/docker/postgres-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
    step "docker import $PG_IMAGE"
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV PGDATA=/var/lib/postgresql/data' \
        -c 'EXPOSE 5432' \
        -c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
        -c 'CMD ["postgres"]' \
        - "$PG_IMAGE" >/dev/null
    step "image $PG_IMAGE ready"
}

broker_binary() { echo "$ROOT/target/$PROFILE/sagaflow"; }

broker_tag() { sha256sum "$(broker_binary)" | cut -c1-12; }

broker_image() {
    engine
    local bin
    bin=$(broker_binary)
    if [ ! -x "$bin" ]; then
        step "building the sagaflow binary (it embeds the tansu broker)"
        if [ "$PROFILE" = release ]; then
            (cd "$ROOT" && cargo build --release -p sagaflow-cli --bin sagaflow >&2)
        else
            (cd "$ROOT" && cargo build -p sagaflow-cli --bin sagaflow >&2)
        fi
    fi
    local image
    image=$BROKER_REPO:$(broker_tag)
    if have_image "$image"; then
        step "image $image exists"
        return
    fi
    # A minimal root file system: the binary, the shared libraries it links, nothing else.
    local rootfs
    rootfs=$(mktemp -d)
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp" "$rootfs/etc" "$rootfs/var/lib/sagaflow-broker"
    cp "$bin" "$rootfs/usr/local/bin/sagaflow"
    strip "$rootfs/usr/local/bin/sagaflow" 2>/dev/null || true
    ldd "$bin" | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do
        [ -n "$lib" ] && [ -e "$lib" ] || continue
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
    echo 'hosts: files dns' > "$rootfs/etc/nsswitch.conf"
    chmod 1777 "$rootfs/tmp"
    step "docker import $image"
    tar -C "$rootfs" -c . | docker import \
        -c 'EXPOSE 9092' \
        -c 'ENV SAGAFLOW_BROKER_STORAGE=file:///var/lib/sagaflow-broker' \
        -c 'ENTRYPOINT ["/usr/local/bin/sagaflow", "broker"]' \
        - "$image" >/dev/null
    rm -rf "$rootfs"
    docker tag "$image" "$BROKER_REPO:latest"
    step "image $image ready"
}

print_env() {
    echo "export SAGAFLOW_TEST_POSTGRES_IMAGE=$PG_IMAGE"
    if [ -x "$(broker_binary)" ] && have_image "$BROKER_REPO:$(broker_tag)"; then
        echo "export SAGAFLOW_TEST_KAFKA_IMAGE=$BROKER_REPO:$(broker_tag)"
    else
        echo "export SAGAFLOW_TEST_KAFKA_IMAGE=$BROKER_REPO:latest"
    fi
}

case "${1:-all}" in
    engine) engine ;;
    postgres) postgres_image ;;
    broker) broker_image ;;
    env) print_env ;;
    all)
        postgres_image
        broker_image
        step "point the tests at these images with:"
        print_env >&2
        ;;
    *)
        echo "usage: $0 [all|engine|postgres|broker|env]" >&2
        exit 2
        ;;
esac
