# Image of portainer-key-agent: one static binary, the CA bundle, no shell.
#
#   docker build -t portainer-key-agent .
#
# The builder links the binary statically against glibc (crt-static), so the final
# stage needs no libc. glibc 2.34 and later carry the `files` and `dns` name service
# modules inside libc, so the static binary still resolves names from /etc/hosts and
# /etc/resolv.conf. tests/image/build builds the same final stage around a binary
# built on the host, and tests/tests/image.rs checks that only the builder differs.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
# The target triple is the builder's own, so the same file builds amd64 and arm64.
# An explicit --target keeps RUSTFLAGS away from build scripts and proc macros.
RUN target="$(rustc -vV | sed -n 's/^host: //p')" \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --release --locked -p portainer-key-agent --target "$target" \
    && install -D -m 0555 "target/$target/release/portainer-key-agent" /out/portainer-key-agent \
    && /out/portainer-key-agent --version \
    && if ldd /out/portainer-key-agent 2>&1 | grep -q '=>'; then echo "binary is not static" >&2; exit 1; fi

# Final stage. tests/image/build reuses it from FROM on, taking the two
# COPY --from=builder sources from a build context instead.
FROM scratch

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="portainer-key-agent" \
      org.opencontainers.image.description="Writes Portainer's database encryption key and admin password from a secret store to tmpfs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/portainer-key-agent /usr/local/bin/portainer-key-agent

# 65532 is the conventional "nonroot" id of distroless images. The image contains no
# /etc/passwd, so the user is numeric, which also lets Kubernetes verify runAsNonRoot.
USER 65532:65532
# rustls reads the system roots through rustls-native-certs, which honours SSL_CERT_FILE.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# An init container runs once and exits, so a HEALTHCHECK has nothing to probe.
ENTRYPOINT ["/usr/local/bin/portainer-key-agent"]
CMD ["fetch"]
