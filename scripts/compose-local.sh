#!/usr/bin/env bash
# docker-compose.yml on a machine without a container registry (this project's CI):
# locally built images through docker-compose.local.yml.
#
#   scripts/compose-local.sh up      # build images if missing/outdated, up -d, wait until healthy
#   scripts/compose-local.sh smoke   # orders through the running stack: APPROVED and REJECTED
#   scripts/compose-local.sh down    # down -v: containers, network and volumes removed
#   scripts/compose-local.sh all     # up + smoke + down; exit 0 only if everything passed
#   scripts/compose-local.sh images  # only build the images
#
# Images (no pull):
#   local/sagaflow-app:dev       host-built debug binaries (stripped) on a debootstrap'd
#                                bookworm minbase with curl + ca-certificates
#   local/sagaflow-postgres:15   scripts/test-infra.sh postgres (shared with the tests)
#   local/apache-kafka:3.9.1     scripts/test-infra.sh kafka: Apache Kafka from Maven Central
#                                (shared with the tests)
#
# Environment: SAGAFLOW_COMPOSE_PROJECT (default sagaflow-local), SAGAFLOW_UP_TIMEOUT (s, 240),
# SAGAFLOW_SKIP_CARGO=1 (use the binaries already in target/debug).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${SAGAFLOW_INFRA_CACHE:-/var/cache/sagaflow-infra}
APP_IMAGE=local/sagaflow-app:dev
PG_IMAGE=local/sagaflow-postgres:15
PROJECT=${SAGAFLOW_COMPOSE_PROJECT:-sagaflow-local}
UP_TIMEOUT=${SAGAFLOW_UP_TIMEOUT:-240}
BINARIES=(sagaflow order-service inventory-service payment-service notification-service
    saga-orchestrator outbox-relay)
# Components with an HTTP port published on the host (outbox-relay has none: checked inside).
declare -A HTTP_PORTS=([order-service]=8081 [inventory-service]=8082 [payment-service]=8083
    [notification-service]=8084 [saga-orchestrator]=8085 [query-service]=8087)

step() { printf '[compose-local %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { step "FAIL: $*"; exit 1; }
compose() {
    # --compatibility: Compose v1 honours deploy.replicas (outbox-relay) only with it.
    docker-compose --compatibility -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$ROOT/docker-compose.local.yml" "$@"
}
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The stack is closed by default: docker-compose.yml needs SAGAFLOW_JWT_SECRET (from .env).
bash "$ROOT/scripts/compose-secret.sh"
SAGAFLOW_JWT_SECRET=$(sed -n 's/^SAGAFLOW_JWT_SECRET=//p' "$ROOT/.env" | tail -n1)
export SAGAFLOW_JWT_SECRET
CUSTOMER=0190b6d2-0000-7000-8000-000000000001

# An HS256 token for `sub` (roles as JSON array), as `sagaflow token` mints them.
mint() {
    python3 - "$1" "$2" <<'PY'
import base64, hashlib, hmac, json, os, sys, time
part = lambda d: base64.urlsafe_b64encode(json.dumps(d, separators=(",", ":")).encode()).rstrip(b"=")
signing = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(
    {"sub": sys.argv[1], "exp": int(time.time()) + 3600, "roles": json.loads(sys.argv[2])})
sig = hmac.new(os.environ["SAGAFLOW_JWT_SECRET"].encode(), signing, hashlib.sha256).digest()
print((signing + b"." + base64.urlsafe_b64encode(sig).rstrip(b"=")).decode())
PY
}

debian_mirror() {
    local mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [ -z "$mirror" ]; then
        mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    [ -n "$mirror" ] || fail "no Debian mirror configured in /etc/apt"
    echo "$mirror"
}

# bookworm minbase + curl + ca-certificates, trimmed (docs, man pages, locales, apt lists).
app_rootfs() {
    local rootfs=$CACHE/rootfs-app
    if [ -x "$rootfs/usr/bin/curl" ] && [ -s "$rootfs/etc/ssl/certs/ca-certificates.crt" ]; then
        echo "$rootfs"
        return
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        step "installing debootstrap (apt)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
    fi
    local mirror
    mirror=$(debian_mirror)
    step "debootstrap bookworm minbase + curl, ca-certificates into $rootfs (about 1 min)"
    rm -rf "$rootfs" "$rootfs.partial"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase --include=curl,ca-certificates bookworm "$rootfs.partial" \
        "$mirror" >"$CACHE/debootstrap-app.log" 2>&1 || {
        tail -n 30 "$CACHE/debootstrap-app.log" >&2
        fail "debootstrap failed (log: $CACHE/debootstrap-app.log)"
    }
    mv "$rootfs.partial" "$rootfs"
    echo "$rootfs"
}

trim_rootfs() {
    local rootfs=$1
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
}

app_image() {
    if [ "${SAGAFLOW_SKIP_CARGO:-0}" != 1 ]; then
        step "cargo build --workspace --bins (debug)"
        (cd "$ROOT" && cargo build --workspace --bins >&2) || fail "cargo build failed"
    fi
    local bin sums=()
    for bin in "${BINARIES[@]}"; do
        [ -x "$ROOT/target/debug/$bin" ] || fail "missing target/debug/$bin"
        sums+=("$(sha256sum "$ROOT/target/debug/$bin" | cut -c1-16)")
    done
    local build_id
    build_id=$(printf '%s\n' "${sums[@]}" | sha256sum | cut -c1-16)
    if have_image "$APP_IMAGE" &&
        docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$APP_IMAGE" |
        grep -qx "SAGAFLOW_BUILD=$build_id"; then
        step "image $APP_IMAGE is up to date (build $build_id)"
        return
    fi
    local rootfs staging previous
    previous=$(docker image inspect -f '{{.Id}}' "$APP_IMAGE" 2>/dev/null || true)
    rootfs=$(app_rootfs)
    trim_rootfs "$rootfs"
    staging=$(mktemp -d)
    mkdir -p "$staging/usr/local/bin"
    for bin in "${BINARIES[@]}"; do
        strip -o "$staging/usr/local/bin/$bin" "$ROOT/target/debug/$bin" || fail "strip $bin"
    done
    chmod 0755 "$staging/usr/local/bin"/*
    step "docker import $APP_IMAGE (binaries: $(du -sh "$staging" | cut -f1), build $build_id)"
    # One stream: the cached rootfs, then the binaries (files only, directories untouched).
    tar -c -C "$rootfs" . -C "$staging" $(cd "$staging" && printf './usr/local/bin/%s ' "${BINARIES[@]}") |
        docker import \
            -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'ENV LOG_FORMAT=json' \
            -c "ENV SAGAFLOW_BUILD=$build_id" \
            -c 'USER nobody' \
            -c 'CMD ["sagaflow", "--help"]' \
            - "$APP_IMAGE" >/dev/null || fail "docker import $APP_IMAGE"
    rm -rf "$staging"
    # The previous build, now untagged (vfs: every image is a full copy); kept if still in use.
    [ -z "$previous" ] || docker image rm "$previous" >/dev/null 2>&1 || true
    step "image $APP_IMAGE ready ($(docker image inspect -f '{{.Size}}' "$APP_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
}

images() {
    bash "$ROOT/scripts/test-infra.sh" prereqs || fail "no docker engine"
    if ! command -v docker-compose >/dev/null 2>&1; then
        step "installing docker-compose (apt)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >&2 ||
            fail "apt-get install docker-compose"
    fi
    have_image "$PG_IMAGE" || bash "$ROOT/scripts/test-infra.sh" postgres || fail "building $PG_IMAGE"
    bash "$ROOT/scripts/test-infra.sh" kafka || fail "building the Apache Kafka image"
    app_image
}

# Fixed host ports of docker-compose.yml: report whoever holds them, never kill them.
check_ports() {
    local port busy=0
    for port in 5432 29092 8081 8082 8083 8084 8085 8090; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            step "port 127.0.0.1:$port is already in use: $(ss -ltnpH "sport = :$port" 2>/dev/null | awk '{print $NF}' | head -1)"
            busy=1
        fi
    done
    [ "$busy" = 0 ] || fail "free the ports above (or run '$0 down' if it is an earlier stack)"
}

# name status health exit-code, one line per container of the project.
container_states() {
    local ids
    ids=$(compose ps -q 2>/dev/null || true)
    [ -n "$ids" ] || return 0
    # shellcheck disable=SC2086
    docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} {{.State.ExitCode}}' $ids |
        sed 's#^/##'
}

up() {
    images
    check_ports
    step "docker-compose up -d (project $PROJECT)"
    compose up -d >&2 || fail "docker-compose up failed"
    local deadline=$((SECONDS + UP_TIMEOUT)) states pending last=""
    while :; do
        states=$(container_states)
        # Ready: every long-running container healthy, the one-shot `topics` exited 0.
        pending=$(awk '
            $1 ~ /_topics_/ { if ($2 == "exited" && $4 == 0) next; if ($2 == "exited") { print "FAILED " $0; next } }
            $1 !~ /_topics_/ && $2 == "running" && $3 == "healthy" { next }
            { print }' <<<"$states")
        if [ -n "$states" ] && [ -z "$pending" ]; then
            step "all $(wc -l <<<"$states") containers ready ($((SECONDS))s since this script started):"
            sed 's/^/    /' <<<"$states" >&2
            return 0
        fi
        if [ "$pending" != "$last" ]; then
            step "waiting for: $(awk '{printf "%s(%s/%s) ", $1, $2, $3}' <<<"$pending")"
            last=$pending
        fi
        if grep -q '^FAILED' <<<"$pending" || [ "$SECONDS" -ge "$deadline" ]; then
            step "not ready within ${UP_TIMEOUT}s (or a one-shot failed); states and last logs:"
            sed 's/^/    /' <<<"$states" >&2
            compose logs --no-color --tail=25 >&2 || true
            return 1
        fi
        sleep 2
    done
}

# HTTP helper: prints the body, fails on a status other than the expected one.
http() {
    local expected=$1 method=$2 url=$3
    shift 3
    local out code
    out=$(mktemp)
    code=$(curl -sS -o "$out" -w '%{http_code}' -X "$method" "$url" "$@") || {
        rm -f "$out"
        fail "$method $url: no answer"
    }
    if [ "$code" != "$expected" ]; then
        step "$method $url -> $code (expected $expected): $(head -c 400 "$out")"
        rm -f "$out"
        return 1
    fi
    cat "$out"
    rm -f "$out"
}

json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

place_order() {
    local key=$1 method=$2
    http 202 POST http://127.0.0.1:8081/orders -H 'Content-Type: application/json' \
        -H "Authorization: Bearer $CUSTOMER_TOKEN" -H "Idempotency-Key: $key" \
        -d '{"customer_id":"'"$CUSTOMER"'","items":[{"sku":"SKU-1","quantity":2,"unit_price_cents":1250}],"currency":"EUR","payment_method":"'"$method"'"}'
}

# Poll GET /orders/{id} until `want` (deadline 30 s); a different terminal status fails.
await_status() {
    local id=$1 want=$2 deadline=$((SECONDS + 30)) status=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        status=$(http 200 GET "http://127.0.0.1:8081/orders/$id" -H "Authorization: Bearer $CUSTOMER_TOKEN" | json 'd["status"]') || status="?"
        case "$status" in
            "$want")
                step "order $id is $status"
                return 0
                ;;
            APPROVED | REJECTED | FAILED) fail "order $id ended $status, expected $want" ;;
        esac
        sleep 0.2
    done
    fail "order $id still $status after 30 s (expected $want)"
}

# The saga's path (orchestrator) and the customer's notification (polled, deadline 30 s).
saga_and_notification() {
    local id=$1 deadline=$((SECONDS + 30)) sent=""
    echo "    saga: $(http 200 GET "http://127.0.0.1:8085/sagas/$id" -H "Authorization: Bearer $ADMIN_TOKEN" | json '"%s via %s" % (d["saga"]["state"], " > ".join(h["trigger"] for h in d["history"]))')" >&2
    while [ "$SECONDS" -lt "$deadline" ]; do
        sent=$(http 200 GET "http://127.0.0.1:8084/notifications?order_id=$id" -H "Authorization: Bearer $ADMIN_TOKEN" |
            json '",".join(n["template"] for n in d)') || sent=""
        [ -n "$sent" ] && break
        sleep 0.2
    done
    [ -n "$sent" ] || fail "no notification recorded for order $id within 30 s"
    echo "    notification: $sent" >&2
}

stock() { http 200 GET http://127.0.0.1:8082/inventory/SKU-1 -H "Authorization: Bearer $CUSTOMER_TOKEN" | json '"%d/%d" % (d["available"], d["reserved"])'; }

smoke() {
    local run body id before after deadline approved
    run=smoke-$(date +%s)-$$
    CUSTOMER_TOKEN=$(mint "$CUSTOMER" '["customer"]')
    ADMIN_TOKEN=$(mint ops '["admin"]')
    step "the APIs are closed: no token -> 401, a customer's token on an admin route -> 403"
    http 401 GET "http://127.0.0.1:8081/orders/$CUSTOMER" >/dev/null || fail "GET /orders without a token"
    http 403 PUT http://127.0.0.1:8082/inventory/SKU-1 -H 'Content-Type: application/json' \
        -H "Authorization: Bearer $CUSTOMER_TOKEN" -d '{"available":100}' >/dev/null ||
        fail "PUT /inventory/SKU-1 with a customer token"
    step "stock of SKU-1 (inventory-service seeds nothing outside 'sagaflow dev'): set to 100 (admin token)"
    http 200 PUT http://127.0.0.1:8082/inventory/SKU-1 -H 'Content-Type: application/json' \
        -H "Authorization: Bearer $ADMIN_TOKEN" -d '{"available":100}' >/dev/null || fail "PUT /inventory/SKU-1"
    before=$(stock)
    step "SKU-1 available/reserved = $before"

    step "POST /orders (pm_card_visa) -> expect APPROVED"
    body=$(place_order "$run-ok" pm_card_visa) || fail "POST /orders"
    echo "    $body" >&2
    id=$(json 'd["order_id"]' <<<"$body") || fail "no order_id in $body"
    await_status "$id" APPROVED
    step "idempotent retry (same key, same body) returns the same order"
    [ "$(place_order "$run-ok" pm_card_visa | json 'd["order_id"]')" = "$id" ] ||
        fail "same Idempotency-Key gave another order"
    saga_and_notification "$id"
    approved=$id
    after=$(stock)
    step "SKU-1 available/reserved = $after (was $before)"

    step "POST /orders (pm_card_chargeDeclined) -> expect REJECTED, stock released"
    before=$after
    body=$(place_order "$run-declined" pm_card_chargeDeclined) || fail "POST /orders"
    echo "    $body" >&2
    id=$(json 'd["order_id"]' <<<"$body") || fail "no order_id in $body"
    await_status "$id" REJECTED
    deadline=$((SECONDS + 30))
    while after=$(stock) && [ "$after" != "$before" ] && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
    done
    [ "$after" = "$before" ] || fail "SKU-1 stock $after after the declined order, expected $before"
    step "SKU-1 available/reserved = $after (released)"
    saga_and_notification "$id"

    step "both orders' events on orders.events, read inside the network (tools service: sagaflow tail)"
    local events
    events=$(compose run --rm -T sagaflow tail orders.events --from-beginning 2>/dev/null) ||
        fail "sagaflow tail orders.events"
    grep -F "\"key\":\"$approved\"" <<<"$events" | grep -q '"ce_type":"OrderApproved"' ||
        fail "no OrderApproved for $approved on orders.events"
    grep -F "\"key\":\"$id\"" <<<"$events" | grep -q '"ce_type":"OrderRejected"' ||
        fail "no OrderRejected for $id on orders.events"
    echo "    $(grep -c . <<<"$events") messages; OrderApproved for $approved, OrderRejected for $id" >&2
    if command -v kcat >/dev/null 2>&1; then
        step "the same from the host with kcat, on Kafka's EXTERNAL listener 127.0.0.1:29092"
        events=$(kcat -b 127.0.0.1:29092 -C -t orders.events -o beginning -e -f '%k %h\n' 2>/dev/null) ||
            fail "kcat -b 127.0.0.1:29092 -C -t orders.events"
        grep -F "$approved " <<<"$events" | grep -q 'ce_type=OrderApproved' ||
            fail "kcat: no OrderApproved for $approved"
        echo "    kcat: $(grep -c . <<<"$events") messages, OrderApproved for $approved" >&2
    fi

    local name port
    for name in "${!HTTP_PORTS[@]}"; do
        port=${HTTP_PORTS[$name]}
        http 200 GET "http://127.0.0.1:$port/health/ready" >/dev/null || fail "$name /health/ready"
        http 200 GET "http://127.0.0.1:$port/metrics" >/dev/null || fail "$name /metrics"
        step "$name (127.0.0.1:$port): /health/ready 200, /metrics 200"
    done
    # outbox-relay publishes no port (it runs replicated): check each replica from inside.
    local cid replicas=0
    for cid in $(compose ps -q outbox-relay); do
        docker exec "$cid" curl -fsS -o /dev/null http://127.0.0.1:8080/health/ready ||
            fail "outbox-relay $cid /health/ready"
        docker exec "$cid" curl -fsS -o /dev/null http://127.0.0.1:8080/metrics ||
            fail "outbox-relay $cid /metrics"
        replicas=$((replicas + 1))
    done
    [ "$replicas" -ge 1 ] || fail "no outbox-relay container"
    step "outbox-relay ($replicas replicas, inside the network): /health/ready 200, /metrics 200"
    step "smoke passed"
}

down() {
    step "docker-compose down -v (project $PROJECT)"
    compose down -v --remove-orphans >&2
}

case "${1:-}" in
    images) images ;;
    up) up ;;
    smoke) smoke ;;
    down) down ;;
    all)
        result=0
        (up) || result=1 # prints the containers' last log lines itself when it fails
        if [ "$result" = 0 ] && ! (smoke); then
            result=1
            step "logs of the failed smoke test (last lines per container):"
            compose logs --no-color --tail=40 >&2 || true
        fi
        down || result=1
        if [ "$result" = 0 ]; then step "ALL PASSED"; else step "FAILED"; fi
        exit "$result"
        ;;
    *)
        echo "usage: $0 up|smoke|down|all|images" >&2
        exit 2
        ;;
esac
