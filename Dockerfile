# A minimal image of residency-operator: the release build on a distroless "cc" base (glibc,
# libgcc, CA certificates, the nonroot user), running as a non-root user (65532). Without
# Docker, `scripts/image` builds the same content (the binary, the libraries it links, CA
# certificates, passwd/group; same user, entrypoint, command and port) as a reproducible archive.
#
#   docker build -t residency-operator:0.1.0 .
#   kind load docker-image residency-operator:0.1.0 --name mgmt
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# dependencies first, so source edits do not rebuild them
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in $(awk '/^\[\[bench\]\]/ {b = 1; next} b && /^name/ {gsub(/"/, "", $3); print $3; b = 0}' Cargo.toml); do \
         echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked --bin residency-operator \
    && rm -rf src benches
COPY src ./src
COPY data ./data
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin residency-operator \
    && strip target/release/residency-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/residency-operator /usr/local/bin/residency-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/residency-operator"]
CMD ["run"]
