"""Benchmark section: refreshing 20 mutable tags, kubernetes-image-puller's delete-and-recreate vs
kwarm's digest-aware rolling refresh, side by side on the same nodes and the same registry.

The images live in a registry of this section's own on a loopback port (docker-registry with an
access log), so every manifest and blob request of every refresh is counted, with its bytes. Only
the real node pulls (KWOK nodes fake their containers), so bytes are per real node; the gap is
sampled on every node: every 200 ms, for every (node, image), whether a Ready holder pod there
runs the image. "Gap" is the time during which at least one (node, image) had none.

The puller refreshes every CACHING_INTERVAL_HOURS (whole hours) by deleting its DaemonSet and
creating it again (utils.RefreshCache: DeleteDaemonsetIfExists, then CacheImages — the same code it
runs at start). Here a refresh is triggered by starting a new puller process after SIGKILLing the
old one (no SIGTERM: that would delete the DaemonSet on its own), which runs exactly that code.
kwarm checks the tags every DIGEST_CHECK_INTERVAL (10 s here) and rolls only for a changed digest.
"""
import hashlib
import io
import shutil
import tarfile
import tempfile

from common import *  # noqa: F401,F403 (settings, helpers and the modules they use)
from common import _die_with_parent

CLUSTER_DIR = os.environ.get("KWARM_CLUSTER_DIR", "/var/lib/kwarm-cluster")


class OwnRegistry:
    """docker-registry on a free loopback port with an access log; containerd reaches it by
    plain HTTP through a hosts.toml of its own."""

    def __init__(self):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="kwarm-bench-registry-")
        with open(os.path.join(self.dir, "config.yml"), "w") as f:
            f.write("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {self.dir}/data\nhttp:\n  addr: {self.address}\n")
        self.hosts = os.path.join(CLUSTER_DIR, "containerd", "certs.d", self.address)
        os.makedirs(self.hosts, exist_ok=True)
        with open(os.path.join(self.hosts, "hosts.toml"), "w") as f:
            f.write(f'server = "http://{self.address}"\n\n[host."http://{self.address}"]\n'
                    '  capabilities = ["pull", "resolve"]\n')
        self.log_path = os.path.join(self.dir, "access.log")
        self.logf = open(self.log_path, "a")
        self.p = subprocess.Popen(["docker-registry", "serve", os.path.join(self.dir, "config.yml")],
                                  stdout=self.logf, stderr=subprocess.STDOUT, preexec_fn=os.setsid)
        wait_port(self.port, "docker-registry")

    def mark(self):
        self.logf.flush()
        return os.path.getsize(self.log_path)

    LINE = re.compile(r'"(\w+) (/v2/\S*) HTTP/[\d.]+" (\d+) (\d+)')

    def requests(self, since):
        """-> [(method, kind, bytes)] with kind manifest/blob/other, from log offset `since`."""
        out = []
        with open(self.log_path) as f:
            f.seek(since)
            for line in f:
                m = self.LINE.search(line)
                if not m:
                    continue
                method, path, _, size = m.group(1), m.group(2), m.group(3), int(m.group(4))
                kind = "manifest" if "/manifests/" in path else "blob" if "/blobs/" in path else "other"
                out.append((method, kind, size))
        return out

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
            self.p.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.logf.close()
        shutil.rmtree(self.hosts, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def push_random_image(ref, size, seed):
    """A FROM-scratch image with one layer of `size` pseudo-random bytes, as an OCI layout, copied
    to `ref` with skopeo."""
    data = hashlib.shake_256(seed.encode()).digest(size)
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        info = tarfile.TarInfo("data/blob")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    layer = layer.getvalue()
    d = tempfile.mkdtemp(prefix="kwarm-bench-oci-")
    try:
        blobs = os.path.join(d, "blobs", "sha256")
        os.makedirs(blobs)

        def put(content):
            digest = hashlib.sha256(content).hexdigest()
            with open(os.path.join(blobs, digest), "wb") as f:
                f.write(content)
            return f"sha256:{digest}", len(content)

        layer_digest, layer_size = put(layer)
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
        config_digest, config_size = put(config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
        }).encode()
        manifest_digest, manifest_size = put(manifest)
        with open(os.path.join(d, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": "x"}}]}, f)
        with open(os.path.join(d, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion": "1.0.0"}')
        subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{d}:x", f"docker://{ref}"],
                       check=True, capture_output=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


class GapSampler:
    """Every 200 ms: for every node that should hold `images`, whether a Ready holder pod there
    runs each image. Records the seconds during which any (node, image) had none."""

    def __init__(self, ns, images, nodes):
        self.ns, self.images, self.nodes = ns, set(images), set(nodes)
        self.gap = 0.0
        self.worst_missing = 0
        self.samples = 0
        self.stop_flag = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        last = time.monotonic()
        while not self.stop_flag:
            pods = kube.get(f"/api/v1/namespaces/{self.ns}/pods").get("items", [])
            held = set()
            for p in pods:
                if p["metadata"].get("deletionTimestamp"):
                    continue
                node = p.get("spec", {}).get("nodeName")
                ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in p.get("status", {}).get("conditions", []))
                if node and ready:
                    for c in p["spec"]["containers"]:
                        held.add((node, c["image"]))
            missing = sum(1 for n in self.nodes for i in self.images if (n, i) not in held)
            now = time.monotonic()
            if missing:
                self.gap += now - last
            self.worst_missing = max(self.worst_missing, missing)
            self.samples += 1
            last = now
            time.sleep(0.2)

    def stop(self):
        self.stop_flag = True
        self.t.join(5)
        return {"gap_s": round(self.gap, 1), "worst_missing": self.worst_missing, "samples": self.samples}


def traffic(reqs):
    blobs = [b for m, k, b in reqs if k == "blob" and m == "GET"]
    return {"manifest_get": sum(1 for m, k, _ in reqs if k == "manifest" and m == "GET"),
            "manifest_head": sum(1 for m, k, _ in reqs if k == "manifest" and m == "HEAD"),
            "blob_get": len(blobs), "bytes": sum(b for m, _, b in reqs if m == "GET")}


def wait_ready(ns, name, n, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ds = kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/{name}", allow=(404,))
        st = (ds or {}).get("status", {})
        if ds and st.get("observedGeneration") == ds["metadata"]["generation"] \
                and st.get("desiredNumberScheduled") == n and st.get("updatedNumberScheduled") == n \
                and st.get("numberReady") == n:
            return True
        time.sleep(0.2)
    raise RuntimeError(f"DaemonSet {ns}/{name} not ready on {n} nodes within {timeout}s")


def observe(ns, images, nodes, registry, seconds, until=None):
    """Samples the gap and counts the registry's traffic for `seconds` (or until `until()`)."""
    mark = registry.mark()
    sampler = GapSampler(ns, images, nodes)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds and not (until and until()):
        time.sleep(0.5)
    gap = sampler.stop()
    return {**gap, **traffic(registry.requests(mark)), "seconds": round(time.monotonic() - t0, 1)}


def section_refresh():
    m = env_int("BENCH_REFRESH_IMAGES", 20)
    n = env_int("BENCH_REFRESH_NODES", 20)
    size = env_int("BENCH_REFRESH_IMAGE_BYTES", 1 << 20)
    check_cluster()
    puller = Peer("kubernetes-image-puller", "che-kubernetes-image-puller", "kubernetes-image-puller").binary
    registry = OwnRegistry()
    results = {"images": m, "kwok_nodes": n, "image_bytes": size, "puller": None, "kwarm": None}
    ns_p, ns_k = "kwarm-bench-refresh-puller", "kwarm-bench-refresh-kwarm"
    procs = []
    try:
        images = [f"{registry.address}/bench/refresh-{i:02d}:live" for i in range(m)]
        # content no earlier run left in the node's containerd: what a change downloads is counted
        run = str(time.time_ns())
        for i, ref in enumerate(images):
            push_random_image(ref, size, f"refresh-{run}-{i}-v1")
        ensure_nodes(n)
        # the DaemonSets have no node selector: every node of the cluster holds them
        nodes = [x["metadata"]["name"] for x in kube.get("/api/v1/nodes").get("items", [])]
        names = [f"img{i:02d}" for i in range(m)]
        listing = ";".join(f"{nm}={ref}" for nm, ref in zip(names, images))

        puller_image = registry_has(PULLER_IMAGE)
        if puller and not puller_image:
            log(f"  {PULLER_IMAGE} is not in the registry (hack/peers.sh images): the puller is not run")
        if puller and puller_image:
            ensure_ns(ns_p)
            puller_deployment(ns_p)
            env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
                   **puller_env(ns_p, "bench-puller", dict(zip(names, images)), KUBECONFIG)}

            def start_puller(tag):
                logf = open(os.path.join(WORK, f"puller-refresh-{tag}.log"), "w")
                p = subprocess.Popen([puller], env=env, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
                procs.append(p)
                return p

            os.makedirs(WORK, exist_ok=True)
            p = start_puller("start")
            wait_ready(ns_p, "bench-puller", len(nodes))
            time.sleep(3)
            rows = {}
            for case in ("no_change", "one_changed"):
                if case == "one_changed":
                    push_random_image(images[0], size, f"refresh-{run}-0-v2-puller")
                p.kill()
                p.wait()
                t0 = time.monotonic()
                p = start_puller(case)
                done = lambda: kube.get(f"/apis/apps/v1/namespaces/{ns_p}/daemonsets/bench-puller", allow=(404,)) \
                    and time.monotonic() - t0 > 2 and ds_ready(ns_p, "bench-puller", len(nodes))
                rows[case] = observe(ns_p, images, nodes, registry, 300, until=done)
                rows[case]["refresh_s"] = round(time.monotonic() - t0, 1)
                log(f"  puller {case}: {rows[case]}")
                time.sleep(3)
            p.kill()
            p.wait()
            results["puller"] = rows
            delete_ns(ns_p)

        ensure_ns(ns_k)
        km = Kwarm("refresh", {"NAMESPACE": ns_k, "DAEMONSET_NAME": "bench-kwarm", "IMAGES": listing,
                               "WATCH_DEPLOYMENTS": "false", "DIGEST_CHECK_INTERVAL": "10s",
                               "INSECURE_REGISTRIES": registry.address, "CACHING_INTERVAL": "24h"})
        try:
            wait_ready(ns_k, "bench-kwarm", len(nodes))
            time.sleep(12)  # one check: the digests kwarm rolled for are known
            rows = {}
            rows["no_change"] = observe(ns_k, images, nodes, registry, 35)
            log(f"  kwarm no_change: {rows['no_change']}")
            push_random_image(images[0], size, f"refresh-{run}-0-v2-kwarm")
            updated0 = km.metric("kwarm_digest_checks_total")
            t0 = time.monotonic()
            gen0 = kube.get(f"/apis/apps/v1/namespaces/{ns_k}/daemonsets/bench-kwarm")["metadata"]["generation"]

            def rolled():
                ds = kube.get(f"/apis/apps/v1/namespaces/{ns_k}/daemonsets/bench-kwarm")
                return ds["metadata"]["generation"] > gen0 and ds_ready(ns_k, "bench-kwarm", len(nodes)) \
                    and km.metric("kwarm_stale_images") == 0
            rows["one_changed"] = observe(ns_k, images, nodes, registry, 300, until=rolled)
            rows["one_changed"]["refresh_s"] = round(time.monotonic() - t0, 1)
            rows["one_changed"]["digest_checks"] = km.metric("kwarm_digest_checks_total") - updated0
            log(f"  kwarm one_changed: {rows['one_changed']}")
            results["kwarm"] = rows
        finally:
            km.stop()
        delete_ns(ns_k)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for ns in (ns_p, ns_k):
            try:
                delete_ns(ns)
            except Exception as e:  # noqa: BLE001 (cleanup goes on)
                log(f"  cleanup {ns}: {e}")
        delete_bench_nodes()
        registry.stop()
    write_section("refresh", render(results), results)


def ds_ready(ns, name, n):
    ds = kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/{name}", allow=(404,))
    st = (ds or {}).get("status", {})
    return bool(ds) and st.get("observedGeneration") == ds["metadata"]["generation"] \
        and st.get("desiredNumberScheduled") == n and st.get("updatedNumberScheduled") == n and st.get("numberReady") == n


def render(r):
    rows = []
    for tool, key in (("kubernetes-image-puller (delete and recreate)", "puller"), ("kwarm (digest-aware roll)", "kwarm")):
        data = r.get(key)
        for case, label in (("no_change", "nothing changed"), ("one_changed", f"1 of {r['images']} changed")):
            if not data:
                rows.append([tool, label, "not run (no puller binary or image: hack/peers.sh)", "–", "–", "–", "–", "–"])
                continue
            c = data[case]
            took = f"{c['refresh_s']} s" if "refresh_s" in c else f"nothing to do (watched {c['seconds']} s)"
            rows.append([tool, label, f"{c['gap_s']} s", str(c["worst_missing"]),
                         f"{c['manifest_get']} GET, {c['manifest_head']} HEAD", str(c["blob_get"]),
                         fmt_bytes(c["bytes"]), took])
    md = [f"## 7. Refresh of mutable tags\n\n{stamp()}\n",
          f"{r['images']} tags of {fmt_bytes(r['image_bytes'])} each (one random layer) in a registry of the section's own "
          f"with an access log, held on the real node and {r['kwok_nodes']} KWOK nodes. **Gap**: seconds during which some "
          "node had no Ready holder of some image (sampled every 200 ms on every node; *worst* = the most (node, image) "
          "pairs missing at once). Registry traffic is everything the refresh caused; only the real node pulls (KWOK "
          "fakes its containers), so bytes are one node's. The puller's refresh is its own delete-then-create code "
          "(`RefreshCache`), triggered by starting a new puller after SIGKILLing the old (its interval is whole hours); "
          "kwarm's is its digest check every 10 s here (`DIGEST_CHECK_INTERVAL`), observed for 35 s without a change "
          "and until every node holds the new digest after one.\n",
          table(["tool", "case", "gap", "worst missing", "manifest requests", "blob GETs", "bytes sent", "refresh took"], rows),
          "\nThe puller re-pulls every tag on every refresh (pull policy Always): unchanged layers are not downloaded "
          "again while the node still has them, but every holder is gone until its pod is recreated, on every node at "
          "once, and once the DaemonSet is deleted nothing keeps the kubelet's image GC from removing the images. kwarm "
          "only asks the registry (`HEAD` per tag) while nothing changes, and rolls with surge when a digest changes, so "
          "a holder of every image runs on every node throughout. Its refresh time includes the wait for the "
          "next check (up to the 10 s interval); its HEADs are its own checks plus, in a roll, the real node's "
          "containerd resolving each tag once for the new holder pod (pull policy Always on tags).\n"]
    return "\n".join(md)
