# kwarm's holder image: just the static `sleep` binary (a couple of KiB, no libc, no shell), so a
# node pulls almost nothing. The DaemonSet's init container runs `/sleep --copy-to /kip/sleep`;
# the image also serves as the pod sandbox ("pause") image of the local test cluster.
# Build context: the repository root, after hack/build-sleep.sh (which writes
# _output/bin/sleep-amd64 and sleep-arm64). Built per platform (hack/image.sh with
# IMAGE_PLATFORMS, `make images`: one image index for linux/amd64 and linux/arm64); buildah sets
# TARGETARCH from --platform.
FROM scratch
ARG TARGETARCH
COPY _output/bin/sleep-${TARGETARCH} /sleep
USER 65532:65532
ENTRYPOINT ["/sleep"]
