#!/bin/sh
# Entry point of the locally built Apache Kafka image (no registry: see scripts/test-infra.sh
# kafka). It speaks the interface of the official `apache/kafka` image that this project
# uses, so the tests, compose and the cluster target configure both the same way:
#   - every KAFKA_* variable (except the JVM ones) becomes a line of server.properties:
#     prefix dropped, lower-cased, `___` -> `-`, `__` -> `_`, `_` -> `.`
#     (KAFKA_NODE_ID=1 -> node.id=1, KAFKA_LISTENER_SECURITY_PROTOCOL_MAP -> listener.security.protocol.map);
#   - CLUSTER_ID names the KRaft cluster; storage is formatted on first start only, so a
#     restarted container (fault tests) keeps its log and its committed offsets;
#   - KAFKA_HEAP_OPTS and KAFKA_OPTS go to the JVM.
# With no KAFKA_* variable at all it starts a single combined broker and controller on 9092.
set -eu
KAFKA_HOME=/opt/kafka
CONFIG=$KAFKA_HOME/config/server.properties
CLUSTER_ID=${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}

if [ "${1:-kafka}" != kafka ]; then
    exec "$@"
fi

jvm_var() {
    case "$1" in
        KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_PERFORMANCE_OPTS|KAFKA_GC_LOG_OPTS|KAFKA_LOG4J_OPTS|KAFKA_JMX_OPTS|KAFKA_VERSION|KAFKA_HOME) return 0 ;;
        *) return 1 ;;
    esac
}

properties=$(mktemp)
env | sort | while IFS='=' read -r name value; do
    case "$name" in KAFKA_*) ;; *) continue ;; esac
    jvm_var "$name" && continue
    key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
    printf '%s=%s\n' "$key" "$value"
done > "$properties"

if [ -s "$properties" ]; then
    cp "$properties" "$CONFIG"
else
    cat > "$CONFIG" <<'PROPS'
node.id=1
process.roles=broker,controller
listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093
advertised.listeners=PLAINTEXT://localhost:9092
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
controller.quorum.voters=1@localhost:9093
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
PROPS
fi
rm -f "$properties"
# The log directory is the container's own (kept across `docker restart`/`docker start`).
grep -q '^log.dirs=' "$CONFIG" || echo "log.dirs=/var/lib/kafka/data" >> "$CONFIG"
log_dirs=$(sed -n 's/^log.dirs=//p' "$CONFIG")
mkdir -p "$log_dirs"

# The JVM options (word lists by design, hence unquoted below).
java_opts() {
    echo "${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}" \
        "${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true}" \
        "${KAFKA_OPTS:-}" "-Dlog4j.configuration=file:$KAFKA_HOME/config/log4j.properties"
}

if [ ! -f "$log_dirs/meta.properties" ]; then
    # shellcheck disable=SC2046
    java $(java_opts) -cp "$KAFKA_HOME/libs/*" kafka.tools.StorageTool format \
        -t "$CLUSTER_ID" -c "$CONFIG" --ignore-formatted
fi
# exec: the JVM is PID 1 and gets SIGTERM (docker stop) and SIGKILL (docker kill) itself.
# shellcheck disable=SC2046
exec java $(java_opts) -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$CONFIG"
