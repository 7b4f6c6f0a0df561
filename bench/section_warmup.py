"""Benchmark section: warm-up at scale (kwarm against the seed model)."""
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


def seed_job(image_idx, image, node):
    name = f"kwarm-pull-img{image_idx:02d}-{node.replace('.', '-')}"[:63]
    labels = {"kwarm.io/prepullimage": f"img{image_idx:02d}", "kwarm.io/node": node, "app.kubernetes.io/managed-by": "kwarm"}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels, "annotations": {
        "kwarm.io/prepullimage-namespace": "default", "kwarm.io/prepullimage-name": f"img{image_idx:02d}",
        "kwarm.io/prepullimage-uid": "bench"}},
        "spec": {"ttlSecondsAfterFinished": 300, "backoffLimit": 0, "activeDeadlineSeconds": 600,
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "nodeSelector": {"kubernetes.io/hostname": node}, "tolerations": [{"operator": "Exists"}],
                     "restartPolicy": "Never", "containers": [{
                         "name": "pull", "image": image,
                         "command": ["sh", "-c", "echo 'Image pulled successfully' && exit 0"]}]}}}}


def warmup_seed_model(n, m):
    ns = f"kwarm-bench-seed-{n}"
    ensure_ns(ns)
    try:
        a0 = apiserver_counts()
        t0 = time.monotonic()
        jobs = [seed_job(i, img, f"{NODE_PREFIX}{j}") for i, img in enumerate(warm_images(m)) for j in range(n)]
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda jb: kube.post(f"/apis/batch/v1/namespaces/{ns}/jobs", jb, allow=(409,)), jobs))
        t_created = time.monotonic() - t0
        log(f"  seed model: {len(jobs)} Jobs created in {t_created:.0f}s")
        deadline = t0 + env_int("BENCH_WARMUP_TIMEOUT", 900)
        done = None
        last_log = 0
        while time.monotonic() < deadline:
            items = kube.list_all(f"/apis/batch/v1/namespaces/{ns}/jobs", limit=2000)
            ok = sum(1 for j in items if (j.get("status") or {}).get("succeeded"))
            if ok >= len(jobs):
                done = time.monotonic() - t0
                break
            if time.monotonic() - last_log > 10:
                log(f"  seed model: {ok}/{len(jobs)} Jobs succeeded")
                last_log = time.monotonic()
            time.sleep(2)
        a1 = apiserver_counts()
        objs = count_objects(ns)
        return {"seconds_to_created": t_created, "seconds_to_done": done, "requests_total": len(jobs),
                "objects": objs, "apiserver_all": a1[0] - a0[0], "apiserver_writes": a1[1] - a0[1]}
    finally:
        delete_ns(ns, wait=900)


def section_warmup():
    check_cluster()
    m = env_int("BENCH_IMAGES", 20)
    sizes = env_list("BENCH_NODES", "100 500 1000")
    seed_sizes = set(env_list("BENCH_SEED_MODEL_NODES", "100"))
    results = {"kwarm": {}, "seed_model": {}, "stopped": None}
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
            if n in seed_sizes:
                log(f"warm-up: seed model ({n * m} Jobs), {m} images on {n} nodes")
                results["seed_model"][n] = warmup_seed_model(n, m)
                log(f"  -> {results['seed_model'][n]['seconds_to_done']}s")
    finally:
        delete_bench_nodes()

    rows = []
    for n, r in results["kwarm"].items():
        o = r["objects"]
        rows.append([n, "kwarm", f"{r['seconds_to_ds']:.2f} s" if r["seconds_to_ds"] else "–",
                     f"{r['seconds_to_ready']:.1f} s" if r["seconds_to_ready"] else "timed out",
                     f"{o['daemonsets']} DaemonSet + {o['controllerrevisions']} ControllerRevision + {o['pods']} Pods",
                     f"{r['requests_total']} ({', '.join(f'{k} {v}' for k, v in sorted(r['requests'].items()))})",
                     f"{r['apiserver_all']:,.0f} ({r['apiserver_writes']:,.0f} writes)",
                     f"{r['cpu_s']:.2f} s" if r["cpu_s"] is not None else "–", fmt_bytes(r["peak_rss"])])
        s = results["seed_model"].get(n)
        if s:
            o = s["objects"]
            rows.append([n, "seed design (model, see below)", f"{s['seconds_to_created']:.1f} s (Jobs created)",
                         f"{s['seconds_to_done']:.1f} s" if s["seconds_to_done"] else "timed out",
                         f"{o['jobs']} Jobs + {o['pods']} Pods", f"≥ {s['requests_total']:,} (Job creates only)",
                         f"{s['apiserver_all']:,.0f} ({s['apiserver_writes']:,.0f} writes)", "not run", "not run"])
        rows.append([n, "kubernetes-image-puller", "not built", "–", "1 DaemonSet + N Pods (by design)", "–", "–", "–", "–"])
    ratios = []
    for n, s in results["seed_model"].items():
        k = results["kwarm"].get(n)
        if k and k["seconds_to_ready"] and s["seconds_to_done"]:
            ratios.append(f"{n} nodes: seed design {ratio(s['seconds_to_done'], k['seconds_to_ready'])} slower, "
                          f"{ratio(s['objects']['jobs'] + s['objects']['pods'], k['objects']['pods'] + 2)} more objects,"
                          f" {ratio(s['apiserver_all'], k['apiserver_all'])} more API server requests")
    md = [
        "## 3. Warm-up at scale",
        "",
        stamp(),
        "",
        f"Time from starting the manager until {m} images are held on N KWOK nodes: the DaemonSet"
        " reports every pod updated and Ready (all holder containers started), polled every 100 ms."
        " The manager talks to the API server through a counting `kubectl proxy`, so *its* requests"
        " are exact; \"API server requests\" is the delta of `apiserver_request_total` over the run"
        " (all clients: the DaemonSet/Job controllers, scheduler, KWOK — and whatever else shares the"
        " cluster at that moment, so read it as an upper bound). Objects are counted in the namespace"
        " at the end (Events excluded).",
        "",
        table(["nodes", "tool", "start → DaemonSet written", "start → all held", "objects", "manager requests",
               "API server requests", "manager CPU", "manager peak RSS"], rows),
        "",
        "From the DaemonSet on, the time is the DaemonSet controller's: it creates the pods (in"
        " slow-start batches, through the controller-manager's client rate limit, 20 requests/s by"
        " default), the scheduler binds them and KWOK marks them Ready. kwarm's own share is the"
        " \"start → DaemonSet written\" column and its handful of requests.",
        "",
    ]
    if results["stopped"]:
        md += [f"Stopped {results['stopped']}.", ""]
    if ratios:
        md += ["Ratios: " + "; ".join(ratios) + ".", ""]
    skipped = [n for n in results["kwarm"] if n not in results["seed_model"]]
    if skipped and results["seed_model"]:
        md += [f"The seed-design model was not run at {', '.join(map(str, skipped))} nodes"
               f" ({', '.join(f'{n * m:,}' for n in skipped)} Jobs): on this shared 2-core cluster it would"
               " take tens of minutes and slow everyone's tests (set `BENCH_SEED_MODEL_NODES` to run it).", ""]
    if results.get("profile"):
        pr = results["profile"]
        md += [f"**Profile** of the manager during a {pr['nodes']}-node warm-up (symbolized build, `perf record -g`;"
               f" {pr['cpu_s']:.2f} s CPU under perf). Self time by symbol (top):", "", "```",
               *[trunc(l) for l in pr["perf_top"][:20]], "```", "",
               "Inclusive time, frames of kwarm and of the libraries it calls directly:", "", "```",
               *[trunc(l) for l in pr["perf_children"] if re.search(r"kwarm::|serde|kube_|k8s_openapi", l)][:25],
               "```", ""]
    md += [
        "**kubernetes-image-puller** was not run: the Go module proxy refuses"
        " `github.com/che-incubator/kubernetes-image-puller` (403, \"This module version is not"
        " available\"). By design it creates the same kind of DaemonSet (after deleting the old one),"
        " so its warm-up on KWOK would be bounded by the same DaemonSet controller.",
        "",
        "**kwarm seed** (`github.com/bcfmtolgahan/kwarm`) was not built: the proxy refuses it the same"
        " way, and its go.mod declares `module github.com/kwarm/kwarm`, so `go install` by its"
        " repository path would fail even where the proxy serves it. The *seed design* rows are a"
        " model: the driver creates the Jobs the seed creates (one Job per image per node, the Job"
        " shape of its `internal/puller/job.go`: `sh -c echo`, TTL 300 s, backoffLimit 0, nodeSelector"
        " on the hostname) as fast as 16 clients can, and waits until KWOK has completed them all."
        " That leaves out the seed's controller, its PrePullImage objects and its rate limiter, so"
        " its real time and request counts can only be higher. On real nodes the seed design also"
        " holds nothing after the Jobs finish (image GC may drop the images) and fails on images"
        " without a shell.",
    ]
    write_section("warmup", "\n".join(md), results)
