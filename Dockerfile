# Portcullis container image: built with the Rust toolchain, run on slim Debian as an
# unprivileged user. How to run it: README.md, "With Docker".
#
#   docker build -t portcullis .
#   docker run -p 443:8443 -v ./config.toml:/etc/portcullis/config.toml:ro \
#     -v ./certs:/etc/portcullis/certs:ro -v portcullis-data:/data portcullis
#
# The config for the container sets `data_dir = "/data"` and listens on 0.0.0.0:8443
# (with [tls]) or 0.0.0.0:8080 (behind a TLS-terminating load balancer).

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
# .cargo/config.toml sets the `tokio_unstable` cfg (src/server/runtime.rs).
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

COPY src ./src
COPY templates ./templates
COPY assets ./assets
# COPY keeps the files' own times, which can be older than the placeholder build above;
# touching the crate roots makes cargo rebuild the crate itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -m 0755 target/release/portcullis /usr/local/bin/portcullis

# ---- run --------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates is left unpinned on purpose: it must follow Debian's updates, and a
# pinned version vanishes from the archive when the next one is published.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 portcullis \
    && useradd --system --uid 10001 --gid portcullis --home-dir /data \
        --no-create-home --shell /usr/sbin/nologin portcullis \
    && mkdir -p /data /etc/portcullis/certs \
    && chown portcullis:portcullis /data \
    && chmod 0700 /data

COPY --from=build /usr/local/bin/portcullis /usr/local/bin/portcullis

ENV PORTCULLIS_CONFIG=/etc/portcullis/config.toml
VOLUME ["/data"]
EXPOSE 8080 8443
USER 10001:10001
WORKDIR /data

# `portcullis health` asks the running server's /.portcullis/healthz on the listen
# address from the config (over TLS when [tls] is set); no curl needed.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["portcullis", "health"]

# On SIGTERM Portcullis stops accepting, lets requests in flight finish (drain_timeout,
# 30 s by default) and exits 0. Give `docker stop` longer than that: `-t 40`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["portcullis"]
CMD ["serve"]
