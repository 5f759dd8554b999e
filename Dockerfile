# Multi-stage build: compile with the full toolchain, ship a small non-root runtime.
# Queries are checked against the committed .sqlx/ metadata, so no database is needed.
FROM rust:1-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true
COPY Cargo.toml Cargo.lock build.rs ./
COPY .sqlx ./.sqlx
COPY migrations ./migrations
COPY src ./src
RUN cargo build --release --locked --bin storefront

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin storefront
WORKDIR /app
COPY --from=build /src/target/release/storefront /usr/local/bin/storefront
COPY config ./config
RUN mkdir -p /app/var/mail && chown -R storefront /app/var
USER storefront
ENV APP_ENV=production HOST=0.0.0.0 PORT=3000
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:3000/health || exit 1
ENTRYPOINT ["storefront"]
CMD ["serve"]
