# Multi-stage build: compile with the full toolchain, ship a small non-root runtime.
# Queries are checked against the committed .sqlx/ metadata, so no database is needed.
#
# The base images are build arguments so that machines without a registry can bring
# their own (scripts/container-test builds both from Debian packages and passes them):
#   docker build -t storefront .
#   podman build --format docker --build-arg RUST_IMAGE=localhost/... \
#                --build-arg RUNTIME_IMAGE=localhost/... -t storefront .
# RUST_IMAGE needs cargo/rustc on PATH (edition 2024: Rust >= 1.85), a C compiler and
# libc headers (ring, aws-lc-sys); RUNTIME_IMAGE is a Debian bookworm with apt.
# `--format docker` (podman/buildah): the OCI format has no HEALTHCHECK.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock build.rs ./
COPY .sqlx ./.sqlx
# Embedded at compile time: migrations/ by sqlx::migrate!(), templates/email/ by include_str!.
COPY migrations ./migrations
COPY templates ./templates
COPY src ./src
RUN cargo build --release --locked --bin storefront \
 && cp target/release/storefront /usr/local/bin/storefront

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 storefront \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin storefront
# config/ is read at run time relative to the working directory; MAIL_DIR (var/mail) must
# be writable for EMAIL_TRANSPORT=file. Everything else is compiled into the binary.
WORKDIR /app
COPY --from=build /usr/local/bin/storefront /usr/local/bin/storefront
COPY config ./config
RUN mkdir -p /app/var/mail && chown -R 10001:10001 /app/var
USER 10001:10001
ENV APP_ENV=production HOST=0.0.0.0 PORT=3000
EXPOSE 3000
# Shell form on purpose: ${PORT} is the container's, so the probe follows PORT=... overrides.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${PORT:-3000}/health" || exit 1
# Exec form: storefront is PID 1 and receives SIGTERM itself (drains within SHUTDOWN_TIMEOUT).
STOPSIGNAL SIGTERM
ENTRYPOINT ["storefront"]
CMD ["serve"]
