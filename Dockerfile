# syntax=docker/dockerfile:1
# oath-service container image.
#   docker build -t oath-service --build-arg OATH_REVISION=$(git rev-parse --short HEAD) .
#   docker compose up --build        (see docker-compose.yml)
# The build context has no .git: OATH_REVISION is the revision that `oath-service --version` and
# the oath_build_info metric report ("unknown" when not given).
# Queries are checked against the committed .sqlx cache (SQLX_OFFLINE), so no database is
# needed to build: after changing a query, run `cargo sqlx prepare` and commit .sqlx.
# The image serves: it is built without the default feature import-cli, so it has no
# `oath-service import` (a client, run from a default build) nor the crates only that needs
# (docs/decisions.md; scripts/server-crates checks which crates the server build leaves out).

FROM rust:1.95-slim-bookworm AS builder
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never
WORKDIR /build

# Dependencies first: this layer is rebuilt only when Cargo.toml or Cargo.lock change. Same
# features as the build below, so that its dependencies are the ones built here.
# (The crate uses rustls, so neither OpenSSL nor pkg-config is needed; the slim image's gcc
# is enough for ring.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --no-default-features --bin oath-service \
 && rm -rf src

# Then the crate itself. touch: the copied files may be older than the dummy build above,
# and cargo decides freshness by modification time.
COPY src ./src
COPY build.rs ./
# Redoc for GET /docs, compiled into the binary.
COPY assets ./assets
COPY migrations ./migrations
COPY .sqlx ./.sqlx
COPY config ./config
# Declared here, after the dependency layer, so that a new revision rebuilds only the crate.
ARG OATH_REVISION=unknown
RUN find src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --no-default-features --bin oath-service \
 && cp target/release/oath-service /usr/local/bin/oath-service

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 oath \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin oath
WORKDIR /app
COPY --from=builder /usr/local/bin/oath-service /usr/local/bin/oath-service
COPY config /app/config
ENV OATH__SERVER__ADDR=0.0.0.0:8080
EXPOSE 8080
# The binary is its own probe: exit 0 when GET /health/ready answers 200 on the port of
# server.addr (OATH__SERVER__ADDR), else 1.
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 \
    CMD ["oath-service", "healthcheck"]
USER 10001
ENTRYPOINT ["oath-service"]
CMD ["serve"]
