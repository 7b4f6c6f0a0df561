# The kwarm manager: one static binary, nothing else. Build context: the repository root,
# after hack/build-kwarm.sh (or `make build`).
FROM scratch
COPY _output/bin/kwarm /kwarm
USER 65532:65532
ENTRYPOINT ["/kwarm"]
