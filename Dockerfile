# Builds the leadgate binary and runs it on a slim Debian image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p leadgate

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/leadgate --create-home leadgate
COPY --from=build /src/target/release/leadgate /usr/local/bin/leadgate
USER leadgate
WORKDIR /var/lib/leadgate
ENV LEADGATE_LISTEN=0.0.0.0:3000
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/leadgate"]
CMD ["serve"]
