#!/usr/bin/env bash
# Prepares a machine with no container registry for the integration tests.
#
#   scripts/test-infra.sh            # everything: engine, PostgreSQL, Apache Kafka and broker images
#   scripts/test-infra.sh engine     # only make sure a Docker engine answers
#   scripts/test-infra.sh prereqs    # engine + the Debian packages the images and tests need
#                                    # (debootstrap, kcat, Maven and a JRE, Prometheus, Chromium
#                                    # and chromedriver if missing): one apt
#                                    # run, before the parallel image builds
#   scripts/test-infra.sh postgres   # engine + local PostgreSQL image (debootstrap, no pull)
#   scripts/test-infra.sh kafka      # engine + local Apache Kafka image: the broker's jars from
#                                    # Maven Central (scripts/kafka/pom.xml) on a debootstrap'd
#                                    # bookworm with openjdk-17-jre-headless
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
KAFKA_VERSION=${SAGAFLOW_KAFKA_VERSION:-3.9.1}
KAFKA_IMAGE=${SAGAFLOW_LOCAL_KAFKA_IMAGE:-local/apache-kafka:$KAFKA_VERSION}
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

debian_mirror() {
    local mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [ -z "$mirror" ]; then
        mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    [ -n "$mirror" ] || { step "no Debian mirror configured in /etc/apt"; exit 1; }
    echo "$mirror"
}

# debootstrap bookworm minbase with extra packages into $1 (skipped when $2 exists in it).
bootstrap_rootfs() {
    local rootfs=$1 marker=$2 packages=$3
    if [ -e "$rootfs$marker" ]; then
        return
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        step "installing debootstrap (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq debootstrap >&2
    fi
    local mirror log
    mirror=$(debian_mirror)
    log=$CACHE/debootstrap-$(basename "$rootfs").log
    step "debootstrap bookworm + $packages into $rootfs (about 1-3 min)"
    rm -rf "$rootfs"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" \
        > "$log" 2>&1 || {
        tail -n 30 "$log" >&2
        exit 1
    }
    # Documentation and apt lists are dead weight in an image vfs copies per container.
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/cache/apt/*.bin
}

postgres_image() {
    engine
    if have_image "$PG_IMAGE"; then
        step "image $PG_IMAGE exists"
        return
    fi
    local rootfs=$CACHE/rootfs-postgres
    bootstrap_rootfs "$rootfs" /usr/lib/postgresql/15/bin/postgres postgresql-15
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

# The image's content hash: a changed entrypoint, logging setup, pom or this script rebuilds it.
kafka_recipe_hash() {
    cat "$ROOT/scripts/kafka/pom.xml" "$ROOT/scripts/docker/kafka-entrypoint.sh" "$0" \
        "$ROOT/scripts/docker/kafka-log4j.properties" | sha256sum | cut -c1-12
}

kafka_image() {
    engine
    local recipe
    recipe=$(kafka_recipe_hash)
    if have_image "$KAFKA_IMAGE" && [ "$(docker image inspect -f '{{ index .Config.Labels "sagaflow.recipe" }}' "$KAFKA_IMAGE")" = "$recipe" ]; then
        step "image $KAFKA_IMAGE exists"
        return
    fi
    local rootfs=$CACHE/rootfs-kafka libs=$CACHE/kafka-$KAFKA_VERSION/libs
    bootstrap_rootfs "$rootfs" /usr/lib/jvm/java-17-openjdk-amd64/bin/java openjdk-17-jre-headless
    if [ ! -s "$libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
        command -v mvn >/dev/null 2>&1 || { step "mvn (Maven) is required to resolve Apache Kafka"; exit 1; }
        step "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its runtime classpath (Maven)"
        rm -rf "$libs"
        mkdir -p "$CACHE"
        mvn -B -ntp -Dstyle.color=never -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
            -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$libs" \
            > "$CACHE/mvn-kafka.log" 2>&1 || {
            tail -n 30 "$CACHE/mvn-kafka.log" >&2
            exit 1
        }
    fi
    step "installing Apache Kafka $KAFKA_VERSION into the image root"
    rm -rf "$rootfs/opt/kafka"
    mkdir -p "$rootfs/opt/kafka/config" "$rootfs/opt/kafka/bin" "$rootfs/var/lib/kafka/data"
    cp -r "$libs" "$rootfs/opt/kafka/libs"
    install -m 0644 "$ROOT/scripts/docker/kafka-log4j.properties" "$rootfs/opt/kafka/config/log4j.properties"
    install -m 0755 "$ROOT/scripts/docker/kafka-entrypoint.sh" "$rootfs/usr/local/bin/kafka-entrypoint.sh"
    # The official image's tool paths, as used by healthchecks (compose); they log warnings only.
    printf '%s\n' 'log4j.rootLogger=WARN, stderr' \
        'log4j.appender.stderr=org.apache.log4j.ConsoleAppender' \
        'log4j.appender.stderr.layout=org.apache.log4j.PatternLayout' \
        'log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n' \
        'log4j.appender.stderr.Target=System.err' > "$rootfs/opt/kafka/config/tools-log4j.properties"
    local tool
    for tool in kafka-topics:org.apache.kafka.tools.TopicCommand \
        kafka-consumer-groups:org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
        kafka-broker-api-versions:kafka.admin.BrokerApiVersionsCommand; do
        printf '#!/bin/sh\nexec java -Xmx256m -Dlog4j.configuration=file:/opt/kafka/config/tools-log4j.properties -cp "/opt/kafka/libs/*" %s "$@"\n' \
            "${tool#*:}" > "$rootfs/opt/kafka/bin/${tool%%:*}.sh"
        chmod 0755 "$rootfs/opt/kafka/bin/${tool%%:*}.sh"
    done
    step "docker import $KAFKA_IMAGE"
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/opt/kafka/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c "LABEL sagaflow.recipe=$recipe" \
        -c 'EXPOSE 9092' \
        -c 'ENTRYPOINT ["/usr/local/bin/kafka-entrypoint.sh"]' \
        -c 'CMD ["kafka"]' \
        - "$KAFKA_IMAGE" >/dev/null
    step "image $KAFKA_IMAGE ready"
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

# SAGAFLOW_TEST_KAFKA_IMAGE: Apache Kafka, what every integration target runs against.
# SAGAFLOW_TEST_EMBEDDED_BROKER_IMAGE: the embedded broker (tansu in `sagaflow broker`), for a
# lane that runs targets on it (scripts/test.sh --embedded-broker).
print_env() {
    echo "export SAGAFLOW_TEST_POSTGRES_IMAGE=$PG_IMAGE"
    echo "export SAGAFLOW_TEST_KAFKA_IMAGE=$KAFKA_IMAGE"
    if [ -x "$(broker_binary)" ] && have_image "$BROKER_REPO:$(broker_tag)"; then
        echo "export SAGAFLOW_TEST_EMBEDDED_BROKER_IMAGE=$BROKER_REPO:$(broker_tag)"
    else
        echo "export SAGAFLOW_TEST_EMBEDDED_BROKER_IMAGE=$BROKER_REPO:latest"
    fi
}

# Everything that needs apt, in one place: parallel image builds must not race for its lock.
prereqs() {
    engine
    local missing=()
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
    # Debian's kcat (librdkafka 2.0.x): the `dev` target checks it works against `sagaflow dev`.
    command -v kcat >/dev/null 2>&1 || missing+=(kcat)
    # Debian's Prometheus: promtool (scripts/promtool-check.sh) and the server the
    # `observability` target runs. Without its recommends (node exporter, SNMP, IPMI…).
    local lean=()
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || lean+=(prometheus)
    # Debian's Chromium and chromedriver: the `console` target drives the operator console in
    # a headless browser (/usr/bin/chromium, /usr/bin/chromedriver).
    [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || lean+=(chromium chromium-driver)
    if [ "${#missing[@]}" -gt 0 ] || [ "${#lean[@]}" -gt 0 ]; then
        step "installing ${missing[*]} ${lean[*]} (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        [ "${#missing[@]}" -eq 0 ] || apt-get install -y -qq "${missing[@]}" >&2
        [ "${#lean[@]}" -eq 0 ] || apt-get install -y -qq --no-install-recommends "${lean[@]}" >&2
    fi
}

case "${1:-all}" in
    engine) engine ;;
    prereqs) prereqs ;;
    postgres) postgres_image ;;
    kafka) kafka_image ;;
    broker) broker_image ;;
    env) print_env ;;
    all)
        prereqs
        postgres_image
        kafka_image
        broker_image
        step "point the tests at these images with:"
        print_env >&2
        ;;
    *)
        echo "usage: $0 [all|engine|prereqs|postgres|kafka|broker|env]" >&2
        exit 2
        ;;
esac
