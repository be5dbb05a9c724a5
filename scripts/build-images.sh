#!/usr/bin/env bash
# Builds the two container images, llmesh-sidecar and llmesh-operator, from
# this checkout: a static release build of both binaries, their debug info
# split into files next to the images, and images/Containerfile built from a
# staged context (no base image is pulled). Uses buildah, podman or docker,
# whichever is found first.
#
#   LLMESH_IMAGE_REGISTRY   repository prefix (default ghcr.io/llmesh)
#   LLMESH_IMAGE_TAG        tag (default: the workspace version, e.g. 0.1.0)
#   LLMESH_IMAGE_PROFILE    cargo profile (default dist: fat LTO, as released)
#   LLMESH_IMAGE_BUILDER    buildah, podman or docker (default: the first found)
#   LLMESH_BUILDAH_STORAGE_DRIVER  buildah's storage driver (default vfs, which
#                           works in unprivileged containers too)
#   LLMESH_CA_BUNDLE        CA certificates to ship (default the system's bundle)
#
# Prints the image names and sizes; the debug files land in target/images/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

registry="${LLMESH_IMAGE_REGISTRY:-ghcr.io/llmesh}"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)"
tag="${LLMESH_IMAGE_TAG:-$version}"
profile="${LLMESH_IMAGE_PROFILE:-dist}"
ca_bundle="${LLMESH_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# The only target installed on the build machines; static glibc (below)
# needs it named, so proc macros and build scripts stay dynamic.
target=x86_64-unknown-linux-gnu
out=target/images
context="$out/context"
binaries=(llmesh-sidecar llmesh-operator)

builder="${LLMESH_IMAGE_BUILDER:-}"
if [[ -z "$builder" ]]; then
    for candidate in buildah podman docker; do
        if command -v "$candidate" >/dev/null 2>&1; then
            builder="$candidate"
            break
        fi
    done
fi
if [[ -z "$builder" ]]; then
    echo "no image builder found: install buildah, podman or docker" >&2
    exit 1
fi
if [[ ! -r "$ca_bundle" ]]; then
    echo "no CA bundle at $ca_bundle (install ca-certificates or set LLMESH_CA_BUNDLE)" >&2
    exit 1
fi

echo "--- cargo build --profile $profile (static, paths remapped)"
# crt-static: glibc linked in, so the image needs no loader or shared
# libraries; host names resolve through glibc's built-in files and dns
# backends (images/etc/nsswitch.conf). The remaps keep this machine's paths
# (checkout, cargo home) out of panic messages and debug info.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$root=/llmesh --remap-path-prefix=$cargo_home=/cargo" \
    cargo build --locked --profile "$profile" --target "$target" \
    -p llmesh-sidecar -p llmesh-operator --bins

rm -rf "$context"
mkdir -p "$context/etc"
cp images/etc/passwd images/etc/group images/etc/nsswitch.conf "$context/etc/"
cp "$ca_bundle" "$context/ca-certificates.crt"
for binary in "${binaries[@]}"; do
    built="target/$target/$profile/$binary"
    debug="$out/$binary-$tag.debug"
    # Line tables for gdb and addr2line go to a file of their own; the
    # symbol table stays in the image, so a panic backtrace
    # (RUST_BACKTRACE=1) names its functions.
    objcopy --only-keep-debug "$built" "$debug"
    objcopy --strip-debug --add-gnu-debuglink="$debug" "$built" "$context/$binary"
done

# Builds the image of binary NAME as IMAGE.
build_image() {
    local name="$1" image="$2"
    local args=(--file images/Containerfile --target "${name#llmesh-}"
        --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --tag "$image")
    case "$builder" in
        buildah)
            buildah --storage-driver "${LLMESH_BUILDAH_STORAGE_DRIVER:-vfs}" \
                bud --quiet --isolation chroot "${args[@]}" "$context" >/dev/null
            ;;
        *) "$builder" build --quiet "${args[@]}" "$context" >/dev/null ;;
    esac
}

echo "--- $builder: images"
for binary in "${binaries[@]}"; do
    image="$registry/$binary:$tag"
    build_image "$binary" "$image"
    printf '%-45s binary %6d KiB, debug info %s\n' "$image" \
        $(($(stat -c %s "$context/$binary") / 1024)) "$out/$binary-$tag.debug"
done
