#!/usr/bin/env bash
# What CI can check of the container image without a container engine: the
# Dockerfile's build target — a fully static triad binary (musl) — builds, links no
# shared libraries, and runs (`triad crds` prints the CRDs). Uses the dev profile to
# keep CI fast; the Dockerfile builds the same target with --release.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
TARGET=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
command -v musl-gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq musl-tools >/dev/null; }
cargo build --locked --target "$TARGET" --bin triad
bin="target/$TARGET/debug/triad"
if ldd "$bin" 2>&1 | grep -q "=>"; then
  echo "static build: $bin links shared libraries:"; ldd "$bin"; exit 1
fi
"$bin" crds | diff -q - crds/triad.dev.yaml >/dev/null || { echo "static build: triad crds differs from crds/"; exit 1; }
# The Dockerfile's final stage copies exactly this target's binary.
grep -q "target/$TARGET/release/triad" Dockerfile || { echo "Dockerfile does not ship the $TARGET binary"; exit 1; }
log "static build OK: $bin is statically linked and runs"
