# The kwarm manager: one static binary and a CA bundle, nothing else. Build context: the repository root,
# after hack/build-kwarm.sh (or `make build`).
FROM scratch
COPY _output/bin/kwarm /kwarm
# root certificates for registries over HTTPS (digest checks)
COPY _output/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
USER 65532:65532
ENTRYPOINT ["/kwarm"]
