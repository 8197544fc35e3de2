# One image holds all three binaries; compose.yaml picks the role with the command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p demo-app -p lb -p session-store --bins

FROM debian:bookworm-slim
COPY --from=build /src/target/release/demo-app /src/target/release/lb /src/target/release/session-store /usr/local/bin/
# The broker's journal (data/amqp) lives under the working directory.
RUN mkdir -p /var/lib/web-sessions && chown 65534:65534 /var/lib/web-sessions
WORKDIR /var/lib/web-sessions
USER 65534:65534
ENTRYPOINT ["demo-app"]
