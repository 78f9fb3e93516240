#!/usr/bin/env bash
# Builds the wasmtwin container image without a container daemon: an OCI
# image layout written by umoci (Debian: `apt install umoci`), holding a
# built `wasmtwin` binary, the shared libraries it links, CA certificates
# and a non-root user — the same image deploy/image/Dockerfile makes.
#
#   deploy/image/build.sh [BINARY] [LAYOUT] [TAG]
#
# BINARY defaults to target/release/wasmtwin (cargo build --release -p
# wasmtwin), LAYOUT to target/image/oci, TAG to the crate's version. Push it
# with skopeo, e.g.
#   skopeo copy oci:target/image/oci:0.1.0 docker://REGISTRY/wasmtwin:0.1.0
set -euo pipefail

binary=${1:-target/release/wasmtwin}
layout=${2:-target/image/oci}
tag=${3:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}

for tool in umoci strip ldd; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is needed (apt install umoci binutils)" >&2; exit 1; }
done
[ -x "$binary" ] || { echo "build.sh: no binary at $binary (cargo build --release -p wasmtwin)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$layout"
mkdir -p "$(dirname "$layout")"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
root=$work/bundle/rootfs

# The binary, stripped of debug information (a tenth of the size).
install -D -m 0755 "$binary" "$root/usr/local/bin/wasmtwin"
strip "$root/usr/local/bin/wasmtwin"
# The libraries it links (glibc, libgcc…), at the paths the loader looks.
ldd "$binary" | awk '/=>/ && $3 ~ /^\// { print $3 } /^\t\// { print $1 }' | sort -u |
  while read -r lib; do
    # 0755: the kernel executes the dynamic loader among them.
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
# CA certificates, for registries and brokers over TLS.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
# A user and group of their own, and the volume's mount point.
mkdir -p "$root/etc/wasmtwin/trust" "$root/run/secrets" "$root/data" "$root/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
chown 65532:65532 "$root/data"
chmod 1777 "$root/tmp"

umoci repack --image "$layout:$tag" "$work/bundle" >/dev/null
umoci config --image "$layout:$tag" \
  --author "wasmtwin" \
  --config.user 65532:65532 \
  --config.workingdir /data \
  --config.env WASMTWIN_CACHE_DIR=/data/cache \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.volume /data \
  --config.exposedports 8080/tcp \
  --config.entrypoint /usr/local/bin/wasmtwin \
  --config.cmd host --config.cmd --http --config.cmd 0.0.0.0:8080 \
  --config.cmd --data --config.cmd /data/node \
  --config.cmd --trust --config.cmd /etc/wasmtwin/trust \
  --config.cmd --token-file --config.cmd /run/secrets/wasmtwin-token
umoci gc --layout "$layout"
echo "built $layout:$tag ($(du -sh "$layout" | cut -f1))"
