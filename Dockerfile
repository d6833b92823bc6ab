# One image with every Sagaflow binary; docker-compose.yml picks the component by command.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && cp target/release/sagaflow target/release/order-service target/release/inventory-service \
       target/release/payment-service target/release/notification-service \
       target/release/saga-orchestrator target/release/outbox-relay target/release/query-service /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
ENV LOG_FORMAT=json
USER nobody
ENTRYPOINT []
CMD ["sagaflow", "--help"]
