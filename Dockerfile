# The clientgone binary (demo server, traffic generator, proxy) in a small image.
#   docker build -t clientgone .
#   docker run --rm -p 8080:8080 -p 9464:9464 clientgone demo --listen 0.0.0.0:8080 --metrics-listen 0.0.0.0:9464

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release -p clientgone-agent --locked \
 && install -D -m 0755 target/release/clientgone /out/clientgone

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 clientgone \
 && useradd --system --uid 10001 --gid clientgone --no-create-home --shell /usr/sbin/nologin clientgone
COPY --from=builder /out/clientgone /usr/local/bin/clientgone
USER 10001:10001
EXPOSE 8080 9464
ENTRYPOINT ["clientgone"]
CMD ["demo", "--listen", "0.0.0.0:8080", "--metrics-listen", "0.0.0.0:9464"]
