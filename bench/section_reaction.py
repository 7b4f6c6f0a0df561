"""Benchmark section: reaction to a Deployment image change."""
from common import *  # noqa: F401,F403 (settings, helpers and the modules they use)
from common import _die_with_parent


class DsWatcher(threading.Thread):
    """Records (arrival monotonic time, images, status) of every event of one DaemonSet."""

    def __init__(self, ns, name):
        super().__init__(daemon=True)
        self.ns, self.name = ns, name
        self.events = []
        self.cond = threading.Condition()

    def run(self):
        while True:
            try:
                for typ, obj, t in kube.watch(f"/apis/apps/v1/namespaces/{self.ns}/daemonsets"
                                              f"?fieldSelector=metadata.name%3D{self.name}"):
                    if typ in ("ADDED", "MODIFIED"):
                        with self.cond:
                            self.events.append((t, ds_images(obj), obj.get("status", {}), obj["metadata"].get("generation")))
                            self.cond.notify_all()
            except Exception as e:  # noqa: BLE001
                log(f"DaemonSet watch ended ({e}); restarting")
                time.sleep(0.5)

    def wait_for(self, pred, since, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            i = 0
            while True:
                while i < len(self.events):
                    ev = self.events[i]
                    i += 1
                    if ev[0] >= since and pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


class ObjWatcher(threading.Thread):
    """Arrival times of resourceVersions of one ConfigMap (the API round-trip floor)."""

    def __init__(self, ns, name):
        super().__init__(daemon=True)
        self.ns, self.name = ns, name
        self.seen = {}
        self.cond = threading.Condition()

    def run(self):
        for typ, obj, t in kube.watch(f"/api/v1/namespaces/{self.ns}/configmaps?fieldSelector=metadata.name%3D{self.name}"):
            with self.cond:
                self.seen[(obj.get("data") or {}).get("v")] = t
                self.cond.notify_all()

    def wait(self, value, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while value not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.seen[value]


class PodTimeline(threading.Thread):
    """First arrival time of each stage of every pod in a namespace (watch)."""

    def __init__(self, ns):
        super().__init__(daemon=True)
        self.ns = ns
        self.first = {}  # pod name -> {stage: monotonic time}
        self.lock = threading.Lock()

    @staticmethod
    def stages(pod):
        st = pod.get("status") or {}
        out = ["created"]
        if (pod.get("spec") or {}).get("nodeName"):
            out.append("bound")
        for c in st.get("conditions") or []:
            if c.get("type") == "PodReadyToStartContainers" and c.get("status") == "True":
                out.append("sandbox")
        for c in st.get("initContainerStatuses") or []:
            state = c.get("state") or {}
            if "running" in state or "terminated" in state:
                out.append("init started")
            if "terminated" in state:
                out.append("init done")
        for c in st.get("containerStatuses") or []:
            state = c.get("state") or {}
            if "running" in state:
                out.append("holder running")
        return out

    def run(self):
        while True:
            try:
                for typ, obj, t in kube.watch(f"/api/v1/namespaces/{self.ns}/pods"):
                    if typ in ("ADDED", "MODIFIED"):
                        with self.lock:
                            d = self.first.setdefault(obj["metadata"]["name"], {})
                            for s in self.stages(obj):
                                d.setdefault(s, t)
            except Exception as e:  # noqa: BLE001
                log(f"pod watch ended ({e}); restarting")
                time.sleep(0.5)

    def new_pod_since(self, t0):
        with self.lock:
            for name, d in self.first.items():
                if d.get("created", 0) >= t0:
                    return dict(d)
        return {}


class CtrEvents(threading.Thread):
    """`ctr events`: wall-clock time of every /images/create, by image name."""

    def __init__(self):
        super().__init__(daemon=True)
        self.created = {}
        self.cond = threading.Condition()
        self.p = subprocess.Popen(["ctr", "-a", CTR_SOCK, "events"], stdout=subprocess.PIPE, text=True,
                                  preexec_fn=_die_with_parent)

    def run(self):
        for line in self.p.stdout:
            if "/images/create" not in line:
                continue
            wall = time.time()
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(\.\d+)? \+0000 UTC", line)
            if m:
                import calendar
                wall = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + float(m.group(2) or 0)
            n = re.search(r'"name":"([^"]+)"', line)
            if n:
                with self.cond:
                    self.created.setdefault(n.group(1), wall)
                    self.cond.notify_all()

    def wait(self, name, since, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                t = self.created.get(name)
                if t is not None and t >= since - 0.5:
                    return t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def forget(self, name):
        with self.cond:
            self.created.pop(name, None)

    def stop(self):
        self.p.terminate()


def image_refs_in_containerd(ref):
    """Every containerd image record of a repository:tag (tag, repo@digest, config id)."""
    repo = ref.rsplit(":", 1)[0]
    out = []
    for line in ctr("images", "ls", "-q").splitlines():
        if line == ref or line.startswith(repo + "@"):
            out.append(line)
    return out


def remove_image(ref, config_digest):
    names = image_refs_in_containerd(ref)
    if config_digest and config_digest in ctr("images", "ls", "-q").split():
        names.append(config_digest)
    if names:
        ctr("images", "rm", "--sync", *names, check=False)


def config_digest(ref):
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(raw)["config"]["digest"]


def reaction_ds(samples):
    ns = "kwarm-bench-react"
    ensure_ns(ns)
    tags = [f"{REG}/kwarm-bench/react:t{i}" for i in range(4)]
    km = None
    try:
        kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("react", tags[0]), allow=(409,))
        kube.post(f"/api/v1/namespaces/{ns}/configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                                          "metadata": {"name": "floor"}, "data": {"v": "init"}}, allow=(409,))
        watcher = DsWatcher(ns, "bench-react")
        watcher.start()
        cmw = ObjWatcher(ns, "floor")
        cmw.start()
        km = Kwarm("reaction", {"NAMESPACE": ns, "DAEMONSET_NAME": "bench-react", "WATCH_DEPLOYMENTS": "true",
                                "WATCH_NAMESPACES": ns, "IMAGE_RETENTION": "0s",
                                "NODE_SELECTOR": json.dumps({"kwarm-bench": "no-such-node"})})
        if not watcher.wait_for(lambda ev: tags[0] in ev[1], 0, 60):
            raise RuntimeError(f"the DaemonSet never showed {tags[0]}; log:\n{km.tail()}")
        time.sleep(1)
        lat, floor = [], []
        cur = tags[0]
        for i in range(samples):
            new = tags[(i + 1) % len(tags)]
            t0 = time.monotonic()
            kube.merge_patch(f"/apis/apps/v1/namespaces/{ns}/deployments/react",
                             {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": new}]}}}})
            ev = watcher.wait_for(lambda e, new=new, cur=cur: new in e[1] and cur not in e[1], t0, 10)
            if ev:
                lat.append((ev[0] - t0) * 1000)
            cur = new
            # the floor: one write and its watch event, same client, same API server, right after
            t1 = time.monotonic()
            kube.merge_patch(f"/api/v1/namespaces/{ns}/configmaps/floor", {"data": {"v": str(i)}})
            t2 = cmw.wait(str(i), 10)
            if t2:
                floor.append((t2 - t1) * 1000)
            time.sleep(0.15)
        applies = km.metric("kwarm_daemonset_applies_total")
        return {"latency_ms": lat, "floor_ms": floor, "applies": applies, "missed": samples - len(lat)}
    finally:
        if km:
            km.stop()
        delete_ns(ns, wait=120)


def reaction_pull():
    """Deployment image change -> image present in the real node's containerd, against ctr pull."""
    ns = "kwarm-bench-pull"
    pulls = [tuple(x.split("=", 1)) for x in PULL_IMAGES.split()]
    digests = {ref: config_digest(ref) for _, ref in pulls}
    for _, ref in pulls:
        remove_image(ref, digests[ref])
    ensure_ns(ns)
    events = CtrEvents()
    events.start()
    km = None
    out = []
    try:
        kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("pull", KIP_IMAGE), allow=(409,))
        watcher = DsWatcher(ns, "bench-pull")
        watcher.start()
        pods = PodTimeline(ns)
        pods.start()
        km = Kwarm("pull", {"NAMESPACE": ns, "DAEMONSET_NAME": "bench-pull", "WATCH_DEPLOYMENTS": "true",
                            "WATCH_NAMESPACES": ns, "IMAGE_RETENTION": "0s", "MAX_CONCURRENT_NODES": "1",
                            "NODE_SELECTOR": json.dumps({"kubernetes.io/hostname": REAL_NODE})})

        def settled(image):
            def pred(ev):
                _, images, st, gen = ev
                return (image in images and st.get("observedGeneration") == gen and st.get("desiredNumberScheduled") == 1
                        and st.get("updatedNumberScheduled") == 1 and st.get("numberReady") == 1
                        and st.get("numberAvailable") == 1)
            return pred

        if not watcher.wait_for(settled(KIP_IMAGE), 0, 180):
            raise RuntimeError(f"the holder pod on {REAL_NODE} never became ready; log:\n{km.tail()}")
        for size, ref in pulls:
            # the floor: containerd pulls the same image itself
            remove_image(ref, digests[ref])
            events.forget(ref)
            w0 = time.time()
            r = subprocess.run(["ctr", "-a", CTR_SOCK, "-n", "k8s.io", "images", "pull", "--plain-http", ref],
                               capture_output=True, text=True)
            w1 = time.time()
            t_ev = events.wait(ref, w0, 30)
            floor_ms = ((t_ev or w1) - w0) * 1000
            if r.returncode != 0:
                raise RuntimeError(f"ctr pull {ref}: {r.stderr}")
            remove_image(ref, digests[ref])
            events.forget(ref)
            # kwarm: change the Deployment, wait for the image in containerd and the holder running
            time.sleep(0.3)
            w0, t0 = time.time(), time.monotonic()
            kube.merge_patch(f"/apis/apps/v1/namespaces/{ns}/deployments/pull",
                             {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": ref}]}}}})
            ev_ds = watcher.wait_for(lambda e, ref=ref: ref in e[1], t0, 30)
            t_img = events.wait(ref, w0, 120)
            ev_held = watcher.wait_for(settled(ref), t0, 180)
            sample = {"size": size, "ref": ref, "floor_ms": floor_ms, "ctr_wall_ms": (w1 - w0) * 1000 if False else None,
                      "ds_ms": (ev_ds[0] - t0) * 1000 if ev_ds else None,
                      "present_ms": (t_img - w0) * 1000 if t_img else None,
                      "held_ms": (ev_held[0] - t0) * 1000 if ev_held else None}
            tl = pods.new_pod_since(t0)
            sample["stages_ms"] = {k: (v - t0) * 1000 for k, v in tl.items()}
            if t_img:
                sample["stages_ms"]["image present"] = sample["present_ms"]
            sample["running_after"] = running_with_image(ref)
            out.append(sample)
            log(f"  {size}: floor {floor_ms:.0f} ms, kwarm present {sample['present_ms']} ms, held {sample['held_ms']} ms")
            if not ev_held:
                log(f"holder for {ref} not ready; log:\n{km.tail()}")
    finally:
        if km:
            km.stop()
        delete_ns(ns, wait=120)
        time.sleep(2)
        for _, ref in pulls:
            remove_image(ref, digests[ref])
    seed = peers()["seed"]
    try:
        seed_out = reaction_seed(seed, pulls, digests, events) if seed.binary else seed.reason
    finally:
        events.stop()
    return out, seed_out


def running_with_image(ref):
    """How many containers of the image have a running task on the real node (what keeps the
    kubelet's image GC from removing it)."""
    running = {line.split()[0] for line in ctr("tasks", "ls").splitlines()[1:]
               if len(line.split()) >= 3 and line.split()[2] == "RUNNING"}
    return sum(1 for line in ctr("containers", "ls").splitlines()[1:]
               if len(line.split()) >= 2 and line.split()[1] == ref and line.split()[0] in running)


def reaction_seed(peer, pulls, digests, events):
    """The kwarm seed on the same change: one PrePullPolicy selecting the labelled Deployment and
    the real node. On a change it creates a PrePullImage, whose Job runs the new image on the node
    (`sh -c echo`: these images have no shell, so the Job's container fails once the image is
    pulled; the pull is what is measured)."""
    ns = "kwarm-bench-seed-pull"
    had_system = seed_namespace_existed()
    crds = seed_crds(peer)
    for path in crds:
        apply_crd(path)
    ensure_ns(ns)
    ensure_ns(SEED_NS)
    dep = f"/apis/apps/v1/namespaces/{ns}/deployments/pull"
    proc = None
    out = []
    try:
        seed_policy("bench-pull", ns, {"kubernetes.io/hostname": REAL_NODE})
        kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("pull", KIP_IMAGE), allow=(409,))
        proc = seed_process("seed-pull", peer, KUBECONFIG)
        # it has seen the Deployment once it wrote its last-images annotation
        deadline = time.monotonic() + 120
        while not ((kube.get(dep)["metadata"].get("annotations") or {}).get("kwarm.io/last-images")):
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"the seed never annotated the Deployment; log:\n{proc.tail()}")
            time.sleep(0.2)
        for size, ref in pulls:
            remove_image(ref, digests[ref])
            events.forget(ref)
            time.sleep(0.3)
            w0 = time.time()
            kube.merge_patch(dep, {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": ref}]}}}})
            t_img = events.wait(ref, w0, 180)
            # afterwards: its Job's pod has run (and failed: no shell); does anything keep the image?
            time.sleep(15)
            sample = {"size": size, "ref": ref, "present_ms": (t_img - w0) * 1000 if t_img else None,
                      "running_after": running_with_image(ref)}
            out.append(sample)
            log(f"  seed {size}: present {sample['present_ms']} ms, running containers of it afterwards"
                f" {sample['running_after']}")
        return out
    finally:
        if proc:
            proc.stop()
        kube.delete(f"{SEED_API}/prepullpolicies/bench-pull")
        seed_cleanup(ns, had_system)
        for path in crds:
            delete_crd(path)
        for _, ref in pulls:
            remove_image(ref, digests[ref])


STAGE_ORDER = ["DaemonSet updated", "created", "bound", "sandbox", "init started", "init done", "image present",
               "holder running", "held (DaemonSet Ready)"]


def stage_table(pull):
    vals = {}
    for p in pull:
        st = dict(p.get("stages_ms") or {})
        if p.get("ds_ms") is not None:
            st["DaemonSet updated"] = p["ds_ms"]
        if p.get("held_ms") is not None:
            st["held (DaemonSet Ready)"] = p["held_ms"]
        for k, v in st.items():
            vals.setdefault(k, []).append(v)
    return [(k, vals[k]) for k in STAGE_ORDER if k in vals]


def seed_table(pull, seed_pull):
    """kwarm and the seed on the same changes: image present on the node, and kept afterwards."""
    md = ["**The same change with the kwarm seed.** The seed (built by `hack/peers.sh` from its source"
          " archive, its manager out of cluster) watches the same kind of labelled Deployment through a"
          " PrePullPolicy selecting it and the real node; each sample again uses an image the node does"
          " not have. \"Running afterwards\" counts the containers of the image with a running task"
          " on the node 15 s after it was present (kwarm: once its holder is Ready): a running"
          " container is what keeps the kubelet's image garbage collection from removing it.", ""]
    if isinstance(seed_pull, str):
        return md + [f"The seed was not run: {seed_pull}.", ""]
    rows = []
    for size in dict.fromkeys(p["size"] for p in pull):
        k = [p for p in pull if p["size"] == size]
        sd = [p for p in seed_pull if p["size"] == size]
        kp = summary([p["present_ms"] for p in k if p["present_ms"]])
        sp = summary([p["present_ms"] for p in sd if p["present_ms"]])
        rows.append([size, f"{len(k)} / {len(sd)}", fmt_ms(kp["p50"]), fmt_ms(sp["p50"]), ratio(sp["p50"], kp["p50"]),
                     f"{sum(p['running_after'] > 0 for p in k)}/{len(k)}",
                     f"{sum(p['running_after'] > 0 for p in sd)}/{len(sd)}"])
    return md + [table(["image data", "samples (kwarm / seed)", "kwarm → present p50 (ms)", "seed → present p50 (ms)",
                        "seed ÷ kwarm", "kwarm: running afterwards", "seed: running afterwards"], rows), "",
                 "The seed's path is its Deployment reconcile, a PrePullImage, its reconcile, a Job, the Job"
                 " controller's pod, the scheduler and the kubelet; once the Job's pod has ended nothing"
                 " holds the image, so the node keeps it only until the kubelet's image GC needs the space.", ""]


def section_reaction():
    check_cluster()
    samples = env_int("BENCH_REACTION_SAMPLES", 200)
    log(f"reaction: {samples} Deployment image changes")
    ds = reaction_ds(samples)
    log("reaction: image present in containerd")
    pull, seed_pull = reaction_pull() if PULL_IMAGES else ([], "no pull images (PULL_IMAGES)")
    s, f = summary(ds["latency_ms"]), summary(ds["floor_ms"])
    md = [
        "## 4. Reaction",
        "",
        stamp(),
        "",
        f"**Deployment image change → DaemonSet updated.** {s['n']} changes of the image of a"
        " Deployment (replicas 0, `kwarm.io/enabled=true`) among 4 tags; time from sending the PATCH"
        " until the driver's watch of the DaemonSet delivers the new image. The floor is one write and"
        " its own watch event (a ConfigMap patched by the same client right after each change):"
        " kwarm's path needs two of those (the Deployment, then the DaemonSet); it acts on a change"
        " after a quiet spell at once and coalesces what follows within 50 ms.",
        "",
        table(["", "n", "min", "p50", "p90", "p99", "max"], [
            ["kwarm: change → DaemonSet updated (ms)", s["n"], fmt_ms(s["min"]), fmt_ms(s["p50"]), fmt_ms(s["p90"]),
             fmt_ms(s["p99"]), fmt_ms(s["max"])],
            ["floor: one write → its watch event (ms)", f["n"], fmt_ms(f["min"]), fmt_ms(f["p50"]), fmt_ms(f["p90"]),
             fmt_ms(f["p99"]), fmt_ms(f["max"])],
        ]),
        "",
        f"Missed changes (no DaemonSet update within 10 s): {ds['missed']}. DaemonSet applies:"
        f" {ds['applies']:.0f} for {samples} changes (plus the first).",
        "",
    ]
    data = {"ds": ds, "pull": pull, "seed_pull": seed_pull}
    if pull:
        rows = []
        for size in dict.fromkeys(p["size"] for p in pull):
            ps = [p for p in pull if p["size"] == size]
            fl = summary([p["floor_ms"] for p in ps])
            pr = summary([p["present_ms"] for p in ps if p["present_ms"]])
            he = summary([p["held_ms"] for p in ps if p["held_ms"]])
            dd = summary([p["ds_ms"] for p in ps if p["ds_ms"]])
            rows.append([size, len(ps), fmt_ms(fl["p50"]), fmt_ms(dd["p50"]), fmt_ms(pr["p50"]), fmt_ms(pr["max"]),
                         f"{pr['p50'] - fl['p50']:.0f}" if pr["n"] else "–", fmt_ms(he["p50"])])
        md += [
            f"**Change → image present in containerd on the real node ({REAL_NODE}).** Each sample uses"
            " an image the node has never held (distinct random content, so no shared layers), first"
            " pulled directly with `ctr images pull` (the floor), then removed (`ctr images rm --sync`,"
            " content garbage-collected), then set as the Deployment's image. \"Present\" is containerd's"
            " `/images/create` event for the tag (`ctr events`); \"held\" is the DaemonSet reporting the"
            " new pod Ready (holder running). One node, maxSurge 1.",
            "",
            table(["image data", "samples", "floor: ctr pull p50 (ms)", "→ DaemonSet p50 (ms)",
                   "→ present p50 (ms)", "→ present max (ms)", "overhead over floor p50 (ms)", "→ held p50 (ms)"], rows),
            "",
            "Where the time goes (p50 over all samples, ms after the Deployment PATCH; pod stages are"
            " the arrival of the first pod watch event showing them, so a stage the kubelet reports"
            " together with the next one shows the same time):",
            "",
            table(["stage", "p50 (ms)", "max (ms)"], [
                [k, fmt_ms(summary(v)["p50"]), fmt_ms(summary(v)["max"])] for k, v in stage_table(pull)]),
            "",
            "Between the DaemonSet update and the pull sit the DaemonSet controller (creates the surge"
            " pod), the scheduler, the kubelet's pod sync (sandbox, then the init container copying"
            " `/sleep`), and only then the image pull: kwarm's own share is the \"→ DaemonSet\" column.",
            "",
        ]
        md += seed_table(pull, seed_pull)
    write_section("reaction", "\n".join(md), data)
