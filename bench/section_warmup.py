"""Benchmark section: warm-up at scale, kwarm side by side with the real peers in the same run:
kubernetes-image-puller, the kwarm seed and kube-fledged, each built by hack/peers.sh from its
source archive and run out of cluster through a counting proxy, as kwarm is."""
from common import *  # noqa: F401,F403 (settings, helpers and the modules they use)


def warm_images(m):
    return [f"{REG}/kwarm-bench/warm-{i:02d}:v1" for i in range(m)]


def wait_ds_ready(ns, name, n, timeout, t0):
    """Poll the DaemonSet until n pods are updated and ready -> (seconds to created, to ready)."""
    t_created = None
    deadline = time.monotonic() + timeout
    last_log = 0
    while time.monotonic() < deadline:
        ds = kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/{name}", allow=(404,))
        now = time.monotonic()
        if ds:
            t_created = t_created or now - t0
            st = ds.get("status", {})
            if (st.get("observedGeneration") == ds["metadata"]["generation"] and st.get("desiredNumberScheduled") == n
                    and st.get("numberReady") == n and st.get("updatedNumberScheduled") == n):
                return t_created, now - t0
            if now - last_log > 10:
                log(f"  {ns}: {st.get('numberReady', 0)}/{n} ready, {st.get('updatedNumberScheduled', 0)} updated")
                last_log = now
        time.sleep(0.1)
    return t_created, None


def count_objects(ns):
    out = {}
    for kind, path in [("pods", f"/api/v1/namespaces/{ns}/pods"), ("daemonsets", f"/apis/apps/v1/namespaces/{ns}/daemonsets"),
                       ("controllerrevisions", f"/apis/apps/v1/namespaces/{ns}/controllerrevisions"),
                       ("jobs", f"/apis/batch/v1/namespaces/{ns}/jobs"), ("events", f"/api/v1/namespaces/{ns}/events")]:
        out[kind] = len(kube.list_all(path + "?resourceVersion=0" if False else path))
    return out




def warmup_kwarm(n, m, binary=None, wrap=None, tag=""):
    ns = f"kwarm-bench-warmup-{n}{tag}"
    ensure_ns(ns)
    proxy = CountingProxy(f"warmup-{n}{tag}")
    km = None
    try:
        a0 = apiserver_counts()
        km = Kwarm(f"warmup-{n}{tag}", {
            "NAMESPACE": ns, "DAEMONSET_NAME": "bench-warm", "IMAGES": ";".join(warm_images(m)),
            "WATCH_DEPLOYMENTS": "false", "NODE_SELECTOR": json.dumps({NODE_LABEL[0]: NODE_LABEL[1]}),
        }, kubeconfig=proxy.kubeconfig, binary=binary, wrap=wrap)
        created, ready = wait_ds_ready(ns, "bench-warm", n, env_int("BENCH_WARMUP_TIMEOUT", 900), km.t_start)
        a1 = apiserver_counts()
        cpu = proc_cpu_seconds(km.pid) if km.alive() else None
        rss = proc_status(km.pid).get("VmHWM") if km.alive() else None
        reqs = proxy.requests()
        objs = count_objects(ns)
        if ready is None:
            log(f"kwarm warm-up on {n} nodes timed out; log tail:\n{km.tail()}")
        return {"seconds_to_ds": created, "seconds_to_ready": ready, "requests": count_verbs(reqs),
                "requests_total": len(reqs), "objects": objs, "apiserver_all": a1[0] - a0[0],
                "apiserver_writes": a1[1] - a0[1], "cpu_s": cpu, "peak_rss": rss}
    finally:
        if km:
            km.stop()
        proxy.stop()
        delete_ns(ns, wait=600)


def run_peer(tag, start, done, watched, timeout, interval=0.5):
    """Start a peer (start(kubeconfig) -> PeerProcess) through a counting proxy, with the objects
    that trigger it already in place, and poll done() -> (None | "done" | "failed", progress)
    every `interval` s until it says so, the peer exits or `timeout` passes. `watched` ({kind: path}):
    collections whose creations are counted while it runs."""
    proxy = CountingProxy(f"warmup-{tag}")
    proc = counter = None
    try:
        counter = CreatedCounter(watched)
        a0 = apiserver_counts()
        proc = start(proxy.kubeconfig)
        outcome, progress, seconds, last_log = None, "", None, 0
        while proc.alive() and time.monotonic() - proc.t_start < timeout:
            outcome, progress = done()
            if outcome:
                break
            if time.monotonic() - last_log > 10:
                log(f"  {tag}: {progress}")
                last_log = time.monotonic()
            time.sleep(interval)
        seconds = time.monotonic() - proc.t_start
        a1 = apiserver_counts()
        alive = proc.alive()
        cpu = proc_cpu_seconds(proc.pid) if alive else None
        rss = proc_status(proc.pid).get("VmHWM") if alive else None
        reqs = proxy.requests()
        first = min(counter.first.values()) - proc.t_start if counter.first else None
        if outcome != "done":
            outcome = outcome or ("exited" if not alive else "timed out")
            log(f"{tag}: {outcome} ({progress}); log tail:\n{proc.tail()}")
        succeeded = sorted(counter.succeeded.values())
        return {"outcome": outcome, "progress": progress, "seconds_to_done": seconds if outcome == "done" else None,
                "seconds_to_outcome": seconds, "pods_succeeded": len(succeeded),
                "seconds_to_last_pod_succeeded": succeeded[-1] - proc.t_start if succeeded else None,
                "seconds_to_first": first, "created": counter.counts(), "requests": count_verbs(reqs),
                "requests_total": len(reqs), "apiserver_all": a1[0] - a0[0], "apiserver_writes": a1[1] - a0[1],
                "cpu_s": cpu, "peak_rss": rss, "exit_code": None if alive else proc.p.returncode,
                "log": proc.log_path}
    finally:
        if counter:
            counter.stop()
        if proc:
            proc.stop()
        proxy.stop()


def warmup_puller(peer, n, m, timeout):
    """kubernetes-image-puller: one DaemonSet, its pods on the bench nodes (NODE_SELECTOR)."""
    ns = f"kwarm-bench-puller-{n}"
    ensure_ns(ns)
    puller_deployment(ns)
    images = {f"img{i:02d}": ref for i, ref in enumerate(warm_images(m))}

    def start(kubeconfig):
        return PeerProcess(f"puller-warmup-{n}", [peer.binary],
                           puller_env(ns, "bench-puller", images, kubeconfig, BENCH_SELECTOR))

    def done():
        ds = kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/bench-puller", allow=(404,))
        st = (ds or {}).get("status", {})
        ready = bool(ds) and st.get("observedGeneration") == ds["metadata"]["generation"] \
            and st.get("desiredNumberScheduled") == n and st.get("numberReady") == n \
            and st.get("updatedNumberScheduled") == n
        return ("done" if ready else None), f"{st.get('numberReady', 0)}/{n} pods ready"

    try:
        return run_peer(f"puller-{n}", start, done, {
            "daemonsets": f"/apis/apps/v1/namespaces/{ns}/daemonsets",
            "controllerrevisions": f"/apis/apps/v1/namespaces/{ns}/controllerrevisions",
            "pods": f"/api/v1/namespaces/{ns}/pods"}, timeout, interval=0.1)
    finally:
        delete_ns(ns, wait=600)


def warmup_seed(peer, n, m, timeout):
    """The kwarm seed: one PrePullImage per image, selecting the bench nodes; it runs one Job per
    node per image in kwarm-system (its defaults: 10 pulls at once, 2 per node)."""
    ns = f"kwarm-bench-seed-{n}"
    had_system = seed_namespace_existed()
    ensure_ns(ns)
    ensure_ns(SEED_NS)
    collection = f"{SEED_API}/namespaces/{ns}/prepullimages"
    for i, ref in enumerate(warm_images(m)):
        kube.post(collection, {"apiVersion": "kwarm.io/v1alpha1", "kind": "PrePullImage",
                               "metadata": {"name": f"img{i:02d}"},
                               "spec": {"image": ref, "nodes": {"selector": {"matchLabels": BENCH_SELECTOR}}}})

    def start(kubeconfig):
        return seed_process(f"seed-warmup-{n}", peer, kubeconfig)

    def done():
        items = kube.get(collection).get("items", [])
        phases = [(x.get("status") or {}).get("phase") or "Pending" for x in items]
        pulled = sum(((x.get("status") or {}).get("summary") or {}).get("completed", 0) for x in items)
        progress = f"{phases.count('Completed')}/{m} PrePullImages Completed, {pulled}/{n * m} node pulls"
        if "Failed" in phases:
            return "failed", progress + f", {phases.count('Failed')} Failed"
        return ("done" if phases.count("Completed") == m else None), progress

    try:
        return run_peer(f"seed-{n}", start, done, {
            "jobs": f"/apis/batch/v1/namespaces/{SEED_NS}/jobs", "pods": f"/api/v1/namespaces/{SEED_NS}/pods"}, timeout)
    finally:
        seed_cleanup(ns, had_system)


def warmup_fledged(peer, n, m, timeout):
    """kube-fledged: one ImageCache with the M images and a nodeSelector for the bench nodes; it
    runs one Job per image per node in its namespace and deletes each when it is done."""
    ensure_ns(FLEDGED_NS)
    collection = f"{FLEDGED_API}/namespaces/{FLEDGED_NS}/imagecaches"
    kube.post(collection, {"apiVersion": "kubefledged.io/v1alpha2", "kind": "ImageCache",
                           "metadata": {"name": "bench-warm"},
                           "spec": {"cacheSpec": [{"images": warm_images(m), "nodeSelector": BENCH_SELECTOR}]}})

    def start(kubeconfig):
        return PeerProcess(f"fledged-warmup-{n}", [
            peer.binary, f"--kubeconfig={kubeconfig}", "--logtostderr", "--image-pull-policy=IfNotPresent",
            "--image-cache-refresh-frequency=0s"], {
            "KUBEFLEDGED_NAMESPACE": FLEDGED_NS, "BUSYBOX_IMAGE": FLEDGED_BUSYBOX_IMAGE,
            "KUBEFLEDGED_CRI_CLIENT_IMAGE": "unused"})

    def done():
        st = (kube.get(f"{collection}/bench-warm").get("status") or {})
        progress = f"status {st.get('status') or 'none'}: {st.get('message', '')}".rstrip(": ")
        failures = [f for per_image in (st.get("failures") or {}).values() for f in per_image]
        if failures:
            reasons = sorted({f"{f.get('reason', '')}: {f.get('message', '')}" for f in failures})
            progress += f"; {len(failures)} of {n * m} pulls failed ({'; '.join(reasons)[:300]})"
        if st.get("status") == "Succeeded":
            return "done", progress
        if st.get("status") in ("Failed", "Aborted"):
            return "failed", progress
        return None, progress

    try:
        return run_peer(f"fledged-{n}", start, done, {
            "jobs": f"/apis/batch/v1/namespaces/{FLEDGED_NS}/jobs", "pods": f"/api/v1/namespaces/{FLEDGED_NS}/pods"},
            timeout)
    finally:
        drop_finalizers(collection)
        delete_ns(FLEDGED_NS, wait=900)


def section_warmup():
    check_cluster()
    m = env_int("BENCH_IMAGES", 20)
    sizes = env_list("BENCH_NODES", "100 500 1000")
    peer_sizes = {"puller": set(env_list("BENCH_PULLER_NODES", " ".join(map(str, sizes)))),
                  "seed": set(env_list("BENCH_SEED_NODES", "100")),
                  "fledged": set(env_list("BENCH_FLEDGED_NODES", "100"))}
    peer_timeout = env_int("BENCH_PEER_TIMEOUT", 1800)
    found = peers()
    reasons = {k: p.reason for k, p in found.items() if p.reason}
    if "fledged" not in reasons and not registry_has(FLEDGED_BUSYBOX_IMAGE):
        reasons["fledged"] = f"its BUSYBOX_IMAGE {FLEDGED_BUSYBOX_IMAGE} is not in the local registry (`hack/peers.sh images`)"
    crds = []
    try:
        if "seed" not in reasons:
            crds += seed_crds(found["seed"])
        if "fledged" not in reasons:
            crds.append(fledged_crd(found["fledged"]))
        for path in crds:
            apply_crd(path)
    except RuntimeError as e:
        sys.exit(f"bench: the peers' CRDs: {e}")
    for k, why in reasons.items():
        log(f"warm-up: {found[k].name} is not run: {why}")
    results = {"images": m, "kwarm": {}, "puller": {}, "seed": {}, "fledged": {}, "stopped": None,
               "not_run": {k: {"peer": found[k].name, "reason": why} for k, why in reasons.items()},
               "peers": {k: {"name": p.name, "commit": p.commit, "binary": p.binary} for k, p in found.items()},
               "peer_sizes": {k: sorted(v) for k, v in peer_sizes.items()}, "peer_timeout": peer_timeout}
    runs = {"puller": warmup_puller, "seed": warmup_seed, "fledged": warmup_fledged}
    try:
        for n in sizes:
            try:
                ensure_nodes(n)
            except Exception as e:  # noqa: BLE001
                results["stopped"] = f"at {n} nodes: {e}"
                log(results["stopped"])
                break
            log(f"warm-up: kwarm, {m} images on {n} nodes")
            results["kwarm"][n] = warmup_kwarm(n, m)
            log(f"  -> {results['kwarm'][n]['seconds_to_ready']}s, {results['kwarm'][n]['requests_total']} requests")
            if n == max(sizes) and KWARM_PROFILE and os.path.exists(KWARM_PROFILE) and perf_available() \
                    and os.environ.get("BENCH_PROFILE", "1") == "1":
                data = os.path.join(WORK, "perf-warmup.data")
                log(f"profile: perf record of the manager during a {n}-node warm-up")
                r = warmup_kwarm(n, m, binary=KWARM_PROFILE, tag="-perf",
                                 wrap=["perf", "record", "-F", "499", "-g", "--call-graph", "dwarf,16384", "-o", data])
                results["profile"] = {"nodes": n, "cpu_s": r["cpu_s"] or 0, **perf_reports(data)}
            for k, run in runs.items():
                if k in reasons or n not in peer_sizes[k]:
                    continue
                log(f"warm-up: {found[k].name}, {m} images on {n} nodes")
                results[k][n] = run(found[k], n, m, peer_timeout)
                r = results[k][n]
                log(f"  -> {r['outcome']}: {r['seconds_to_done']}s, {r['requests_total']} requests, {r['created']}")
    finally:
        delete_bench_nodes()
        for path in reversed(crds):
            try:
                delete_crd(path)
            except RuntimeError as e:
                log(f"  cleanup: {e}")
    write_section("warmup", render(results), results)


PEER_LABELS = {"puller": "kubernetes-image-puller", "seed": "kwarm seed", "fledged": "kube-fledged"}
KINDS = {"daemonsets": "DaemonSet", "controllerrevisions": "ControllerRevision", "jobs": "Jobs", "pods": "Pods"}


def fmt_s(v):
    return f"{v:.1f} s" if v is not None else "–"


def peer_row(n, k, r, m):
    made = " + ".join(f"{v:,} {KINDS[kind]}" for kind, v in r["created"].items())
    trigger = {"puller": "", "seed": f"{m} PrePullImages + ", "fledged": "1 ImageCache + "}[k]
    if r["outcome"] == "done":
        took = fmt_s(r["seconds_to_done"])
        if r["pods_succeeded"]:
            took += f" (its last pod Succeeded at {fmt_s(r['seconds_to_last_pod_succeeded'])})"
    else:
        took = f"{r['outcome']} at {fmt_s(r['seconds_to_outcome'])} ({r['progress']})"
        pods = r["created"].get("pods")
        if pods and r["pods_succeeded"] == pods:
            took += f"; all {pods:,} of its pods had Succeeded at {fmt_s(r['seconds_to_last_pod_succeeded'])}"
    return [n, PEER_LABELS[k], fmt_s(r["seconds_to_first"]), took, trigger + made,
            f"{r['requests_total']:,} ({', '.join(f'{v} {c:,}' for v, c in sorted(r['requests'].items()))})",
            f"{r['apiserver_all']:,.0f} ({r['apiserver_writes']:,.0f} writes)",
            f"{r['cpu_s']:.2f} s" if r["cpu_s"] is not None else "–", fmt_bytes(r["peak_rss"])]


def render(results):
    m = results["images"]
    rows, ratios = [], []
    for n, r in results["kwarm"].items():
        o = r["objects"]
        rows.append([n, "kwarm", f"{r['seconds_to_ds']:.2f} s" if r["seconds_to_ds"] else "–",
                     f"{r['seconds_to_ready']:.1f} s" if r["seconds_to_ready"] else "timed out",
                     f"{o['daemonsets']} DaemonSet + {o['controllerrevisions']} ControllerRevision + {o['pods']} Pods",
                     f"{r['requests_total']} ({', '.join(f'{k} {v}' for k, v in sorted(r['requests'].items()))})",
                     f"{r['apiserver_all']:,.0f} ({r['apiserver_writes']:,.0f} writes)",
                     f"{r['cpu_s']:.2f} s" if r["cpu_s"] is not None else "–", fmt_bytes(r["peak_rss"])])
        for k in PEER_LABELS:
            p = results[k].get(n)
            if p:
                rows.append(peer_row(n, k, p, m))
                if p["outcome"] == "done" and r["seconds_to_ready"]:
                    ratios.append(f"{n} nodes, {PEER_LABELS[k]}: time {ratio(p['seconds_to_done'], r['seconds_to_ready'])},"
                                  f" API server requests {ratio(p['apiserver_all'], r['apiserver_all'])},"
                                  f" manager requests {ratio(p['requests_total'], r['requests_total'])}")
            elif k in results["not_run"]:
                rows.append([n, PEER_LABELS[k], "not run (see below)", "–", "–", "–", "–", "–", "–"])
    md = [
        "## 3. Warm-up at scale",
        "",
        stamp(),
        "",
        f"Time from starting each manager until {m} images are held (or pulled) on N KWOK nodes, the"
        " real tools side by side in the same run on the same nodes: kwarm, and the peers built by"
        " `hack/peers.sh` from their source archives (commits below). Each manager runs out of"
        " cluster and talks to the API server through its own counting `kubectl proxy`, so *its*"
        " requests are exact; \"API server requests\" is the delta of `apiserver_request_total` over"
        " its run (all clients: the DaemonSet/Job controllers, scheduler, KWOK — and whatever else"
        " shares the cluster at that moment, so read it as an upper bound). The objects that tell a"
        " peer what to pull (PrePullImages, an ImageCache) are created before its manager starts,"
        " as kwarm's configuration is its environment. Done means:",
        "",
        "- **kwarm** and **kubernetes-image-puller**: the DaemonSet reports every pod updated and"
        " Ready (all holder containers started), polled every 100 ms (the others every 0.5 s)."
        " kwarm's objects are counted in its namespace at the end.",
        "- **kwarm seed**: every PrePullImage (one per image, `spec.nodes.selector` on the bench"
        " nodes) has `.status.phase == Completed`, i.e. a Job per image per node succeeded (its"
        " defaults: `--max-concurrent-pulls=10 --max-pulls-per-node=2`).",
        "- **kube-fledged**: its ImageCache (the M images, a nodeSelector on the bench nodes) has"
        " `.status.status == Succeeded`, i.e. a Job per image per node succeeded"
        " (`--image-pull-policy=IfNotPresent --image-cache-refresh-frequency=0s`).",
        "",
        "The peers' objects are every one created while they ran (watched: the seed's Jobs expire"
        " after 300 s and kube-fledged deletes each Job when it is done), plus the objects that"
        " trigger them; Events excluded. \"start → first write\" is the DaemonSet for kwarm and the"
        " puller, the first Job for the others. For the Job-based peers the row also gives when the"
        " last of their pods Succeeded (watched): what comes after is the peer's own bookkeeping"
        " (kube-fledged deletes its Jobs one by one through client-go's default 5 requests/s"
        " before it writes its status).",
        "",
        table(["nodes", "tool", "start → first write", "start → all held / pulled", "objects", "manager requests",
               "API server requests", "manager CPU", "manager peak RSS"], rows),
        "",
        "From the DaemonSet on, the time is the DaemonSet controller's: it creates the pods (in"
        " slow-start batches, through the controller-manager's client rate limit, 20 requests/s by"
        " default), the scheduler binds them and KWOK marks them Ready. kwarm's own share is the"
        " \"start → first write\" column and its handful of requests. The Job-based peers pay that"
        " per image: M × N Jobs and as many pods, each created, scheduled, run and completed.",
        "",
    ]
    if results["stopped"]:
        md += [f"Stopped {results['stopped']}.", ""]
    unfinished = [f"{PEER_LABELS[k]} at {n} nodes (`{os.path.relpath(r['log'], ROOT)}`)"
                  for k in PEER_LABELS for n, r in results[k].items() if r["outcome"] != "done"]
    if unfinished:
        md += ["Not done: " + ", ".join(unfinished) + ". The row gives the peer's own verdict or where it"
               " stood when the run stopped, and, where every pod it created had Succeeded, when the last"
               " one did (watched).", ""]
    if ratios:
        md += ["Ratios (peer ÷ kwarm): " + "; ".join(ratios) + ".", ""]
    sizes_note = []
    for k, setting in (("puller", "BENCH_PULLER_NODES"), ("seed", "BENCH_SEED_NODES"), ("fledged", "BENCH_FLEDGED_NODES")):
        if k in results["not_run"]:
            continue
        skipped = [n for n in results["kwarm"] if n not in results[k]]
        if skipped:
            sizes_note.append(f"{PEER_LABELS[k]} was not run at {', '.join(map(str, skipped))} nodes"
                              f" (`{setting}`, now {' '.join(map(str, results['peer_sizes'][k])) or 'empty'})")
    md += ["Sizes: each peer runs at the `BENCH_NODES` sizes also in its own setting, `BENCH_PULLER_NODES`"
           " (default: all), `BENCH_SEED_NODES` and `BENCH_FLEDGED_NODES` (default: 100 only). The Job-based"
           " peers create M × N Jobs (20,000 at 1,000 nodes) and run tens of minutes at 100 nodes already"
           " on this shared 2-core cluster, slowing everyone's tests; a peer's run stops after"
           f" `BENCH_PEER_TIMEOUT` ({results['peer_timeout']} s)."
           + (" Here " + "; ".join(sizes_note) + "." if sizes_note else ""), ""]
    if results.get("profile"):
        pr = results["profile"]
        md += [f"**Profile** of the manager during a {pr['nodes']}-node warm-up (symbolized build, `perf record -g`;"
               f" {pr['cpu_s']:.2f} s CPU under perf). Self time by symbol (top):", "", "```",
               *[trunc(l) for l in pr["perf_top"][:20]], "```", "",
               "Inclusive time, frames of kwarm and of the libraries it calls directly:", "", "```",
               *[trunc(l) for l in pr["perf_children"] if re.search(r"kwarm::|serde|kube_|k8s_openapi", l)][:25],
               "```", ""]
    built = [f"{PEER_LABELS[k]} {p['commit']}" for k, p in results["peers"].items()
             if p["binary"] and k not in results["not_run"]]
    if built:
        md += ["Peers measured: " + ", ".join(built) + " (the commits of their source archives).", ""]
    for k, nr in results["not_run"].items():
        md += [f"**{PEER_LABELS[k]} was not run**: {nr['reason']}.", ""]
    md += [
        "On KWOK nodes no image is pulled and no container runs, so these numbers are the control"
        " plane's cost of each design; the bench images need no content. On real nodes the seed's"
        " Jobs run the target image with `sh -c echo` (an image without a shell fails there) and"
        " kube-fledged's copy a static `echo` in from its BUSYBOX_IMAGE first; once their Jobs are"
        " done, nothing holds the images, so the kubelet's image GC may remove them. kwarm and the"
        " puller keep a holder container of every image running on every node.",
    ]
    return "\n".join(md)
