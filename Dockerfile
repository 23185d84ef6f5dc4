# One image for the controller and the agent runtime: a static triad binary on a
# distroless, non-root base. Work commands that need more tools build FROM this image.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tools ./tools
COPY crds ./crds
RUN cargo build --release --locked --bin triad --target x86_64-unknown-linux-musl

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/triad /usr/local/bin/triad
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/triad"]
CMD ["controller"]
