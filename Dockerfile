# flota's container image: the supervisor binary (it is also the worker: it re-executes itself)
# on a small Debian with the system's trusted roots.
#
#   docker build -t flota:0.1.0 .
#   docker run --rm flota:0.1.0 --help
#
# The Kubernetes recipe in scripts/deploy/kubernetes runs this image as an Indexed Job.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin supervisor \
 && install -D target/release/supervisor /out/supervisor

FROM debian:bookworm-slim
# ca-certificates: the roots https URLs are checked against (--ca-cert adds a private CA).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin flota \
 && mkdir -p /data && chown flota:flota /data
COPY --from=build /out/supervisor /usr/local/bin/supervisor
USER flota
WORKDIR /data
ENTRYPOINT ["supervisor"]
CMD ["--help"]
