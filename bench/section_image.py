"""Benchmark section: machinery pulled per node."""
from common import *  # noqa: F401,F403 (settings, helpers and the modules they use)


def registry_image_size(ref):
    """-> dict(manifest, config, layers, total) in bytes of what a node downloads."""
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, text=True, check=True).stdout
    m = json.loads(raw)
    if "manifests" in m:  # an index: take the linux/amd64 one
        d = next(x for x in m["manifests"] if x.get("platform", {}).get("architecture") == "amd64")
        repo = ref.rsplit(":", 1)[0]
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{repo}@{d['digest']}"],
                             capture_output=True, text=True, check=True).stdout
        m = json.loads(raw)
    layers = sum(x["size"] for x in m["layers"])
    return {"manifest": len(raw.encode()), "config": m["config"]["size"], "layers": layers,
            "n_layers": len(m["layers"]), "total": len(raw.encode()) + m["config"]["size"] + layers}


def section_image():
    rows, data = [], {}
    if not PULLER_SLEEP_IMAGE:
        raise RuntimeError(f"no kubernetes-image-puller sleep to compare with: {PULLER_SLEEP_MISSING}")
    kw = registry_image_size(KIP_IMAGE)
    go = registry_image_size(PULLER_SLEEP_IMAGE)
    floor = registry_image_size(PULLER_FLOOR_IMAGE)
    puller = registry_image_size(PULLER_IMAGE)
    mgr = registry_image_size(os.environ["KWARM_IMAGE"])
    data = {"kwarm_sleep": kw, "puller_sleep_scratch": go, "puller_floor": floor, "puller_image": puller,
            "kwarm_manager": mgr}
    for label, d, note in [
        ("kwarm `KIP_IMAGE` (kwarm/sleep)", kw, "FROM scratch + the no_std `sleep`; runs `/sleep --copy-to`"),
        ("the puller's `sleep` alone, FROM scratch", go, "what its Go holder costs at the very least"),
        ("puller init contract, lower bound", floor,
         "FROM scratch + its `sleep` at /bin/sleep + static busybox for `sh -c cp` (its init container needs a shell)"),
        ("the puller's `KIP_IMAGE` as built here", puller,
         "its manager binary (client-go) + its `sleep` + static busybox, FROM scratch (hack/peers.sh); its own"
         " Dockerfile starts FROM ubi9-minimal, which no registry here serves, so its real image is larger"
         " by that base"),
    ]:
        rows.append([label, fmt_bytes(d["total"]), d["n_layers"], ratio(d["total"], kw["total"]), note])
    md = [
        "## 2. Machinery pulled per node",
        "",
        stamp(),
        "",
        "Bytes a node downloads for the init image: manifest + config + compressed layers, read from"
        " the registry with `skopeo inspect --raw`. All images built here with `hack/image.sh` (buildah,"
        " `--timestamp 0`).",
        "",
        table(["image", "download", "layers", "vs kwarm", "content"], rows),
        "",
        f"For reference, kwarm's manager image (FROM scratch, one static binary) is {fmt_bytes(mgr['total'])};"
        " it runs once per cluster, not per node.",
    ]
    write_section("image", "\n".join(md), data)
