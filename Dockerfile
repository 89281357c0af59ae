# Multi-stage build for every service binary: `docker build --build-arg SERVICE=order-service .`
# docker-compose.yml builds the three services from this file.
FROM rust:1.95-bookworm AS build
# librdkafka is compiled from source by rdkafka's cmake-build feature.
RUN apt-get update && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG SERVICE
RUN test -n "$SERVICE" || (echo "build with --build-arg SERVICE=<package name>" >&2; exit 1)
RUN --mount=type=cache,target=/usr/local/cargo/registry --mount=type=cache,target=/src/target \
    cargo build --release --locked -p "$SERVICE" && cp "target/release/$SERVICE" /service

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 app
COPY --from=build /service /usr/local/bin/service
USER app
ENTRYPOINT ["/usr/local/bin/service"]
