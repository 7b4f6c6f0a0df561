# kwarm's holder image: just the static `sleep` binary (a couple of KiB, no libc, no shell), so a
# node pulls almost nothing. The DaemonSet's init container runs `/sleep --copy-to /kip/sleep`;
# the image also serves as the pod sandbox ("pause") image of the local test cluster.
# Build context: the repository root, after hack/build-sleep.sh (which writes _output/bin/sleep).
FROM scratch
COPY _output/bin/sleep /sleep
USER 65532:65532
ENTRYPOINT ["/sleep"]
