#!/usr/bin/env bash
# Writes SAGAFLOW_JWT_SECRET (32 random bytes, hex) to .env next to docker-compose.yml, which
# docker compose reads: the stack's APIs require bearer tokens, and docker-compose.yml refuses
# to start without this secret. An existing secret is kept (tokens already handed out stay
# valid); rotate it by deleting the line. Mint tokens with it:
#   set -a; . ./.env; set +a; sagaflow token --sub <customer-uuid>      (a customer)
#   set -a; . ./.env; set +a; sagaflow token --admin                    (an operator)
set -euo pipefail
env_file="$(cd "$(dirname "$0")/.." && pwd)/.env"
if [ -f "$env_file" ] && grep -q '^SAGAFLOW_JWT_SECRET=..*' "$env_file"; then
    echo "compose-secret: $env_file already has SAGAFLOW_JWT_SECRET (kept)" >&2
    exit 0
fi
secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
umask 077
# Drop an empty assignment, if any, then append the new one.
if [ -f "$env_file" ]; then
    grep -v '^SAGAFLOW_JWT_SECRET=' "$env_file" > "$env_file.tmp" || true
    mv "$env_file.tmp" "$env_file"
fi
echo "SAGAFLOW_JWT_SECRET=$secret" >> "$env_file"
echo "compose-secret: wrote SAGAFLOW_JWT_SECRET to $env_file" >&2
