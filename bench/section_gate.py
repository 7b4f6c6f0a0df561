"""Benchmark section: the node warm-up gate (N KWOK nodes joining at once with the gate taint)."""
from common import *  # noqa: F401,F403 (settings, helpers and the modules they use)
from section_warmup import warm_images

GATE = "kwarm.io/warming-bench"


def gated_node(name):
    node = kwok_node(name)
    node["spec"]["taints"] = [{"key": GATE, "effect": "NoSchedule"}]
    return node


def still_gated():
    """Names of the bench nodes that still carry the gate taint."""
    return {n["metadata"]["name"] for n in bench_nodes()
            if any(t.get("key") == GATE for t in (n.get("spec") or {}).get("taints", []))}


def gate_run(n, m):
    ns = f"kwarm-bench-gate-{n}"
    ensure_ns(ns)
    proxy = CountingProxy(f"gate-{n}")
    km = None
    try:
        km = Kwarm(f"gate-{n}", {
            "NAMESPACE": ns, "DAEMONSET_NAME": "bench-gate", "IMAGES": ";".join(warm_images(m)),
            "WATCH_DEPLOYMENTS": "false", "NODE_SELECTOR": json.dumps({NODE_LABEL[0]: NODE_LABEL[1]}),
            "NODE_GATE_TAINT": GATE, "NODE_GATE_TIMEOUT": "30m",
        }, kubeconfig=proxy.kubeconfig)
        for _ in range(300):
            if kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/bench-gate", allow=(404,)):
                break
            time.sleep(0.1)
        cpu0 = proc_cpu_seconds(km.pid)
        mark = proxy.mark()
        a0 = apiserver_counts()
        joined = {}

        def join(name):
            kube.post("/api/v1/nodes", gated_node(name), allow=(409,))
            joined[name] = time.monotonic()

        names = [f"{NODE_PREFIX}{i}" for i in range(n)]
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(join, names))
        log(f"  {n} gated nodes created in {time.monotonic() - t0:.1f}s")
        released = {}
        deadline = time.monotonic() + env_int("BENCH_WARMUP_TIMEOUT", 900)
        last_log = 0
        while len(released) < n and time.monotonic() < deadline:
            gated = still_gated()
            now = time.monotonic()
            for name in names:
                if name in joined and name not in gated and name not in released:
                    released[name] = now
            if now - last_log > 10:
                log(f"  {len(released)}/{n} nodes released")
                last_log = now
            time.sleep(0.5)
        a1 = apiserver_counts()
        cpu = proc_cpu_seconds(km.pid) - cpu0 if km.alive() else None
        rss = proc_status(km.pid).get("VmHWM") if km.alive() else None
        reqs = proxy.requests(since=mark)
        node_patches = [st for v, u, st in reqs if v == "PATCH" and "/api/v1/nodes/" in u]
        retried = sum(1 for st in node_patches if st.startswith("422"))
        node_patches = len(node_patches)
        events = sum(1 for v, u, _ in reqs if v == "POST" and "/events" in u)
        writes = sum(1 for v, _, _ in reqs if v in WRITE_VERBS)
        waits = [released[x] - joined[x] for x in released]
        metrics = km.metrics()
        return {"nodes": n, "images": m, "released": len(released), "join_to_released": summary(waits),
                "seconds_to_all_released": max(released.values()) - t0 if len(released) == n else None,
                "node_patches": node_patches, "node_patches_retried": retried, "events": events, "manager_writes": writes,
                "manager_requests": len(reqs), "requests": count_verbs(reqs),
                "releases_by_reason": {k: v for k, v in metrics.items() if k.startswith("kwarm_node_gate_releases")},
                "apiserver_all": a1[0] - a0[0], "apiserver_writes": a1[1] - a0[1], "cpu_s": cpu, "peak_rss": rss}
    finally:
        if km:
            km.stop()
        proxy.stop()
        delete_ns(ns, wait=600)


def section_gate():
    check_cluster()
    m = env_int("BENCH_IMAGES", 20)
    sizes = env_list("BENCH_GATE_NODES", "1000")
    results = {}
    try:
        for n in sizes:
            delete_bench_nodes()
            log(f"gate: {n} KWOK nodes join at once with the gate taint, {m} images")
            results[n] = gate_run(n, m)
            r = results[n]
            log(f"  -> p50 {r['join_to_released']['p50']:.1f}s, p99 {r['join_to_released']['p99']:.1f}s,"
                f" {r['node_patches']} node patches")
    finally:
        delete_bench_nodes()

    rows = []
    for n, r in results.items():
        s = r["join_to_released"]
        rows.append([n, f"{r['released']}/{n}", f"{s['p50']:.1f} s", f"{s['p99']:.1f} s", f"{s['max']:.1f} s",
                     f"{r['node_patches'] / n:.2f} ({r['node_patches_retried']})", f"{r['events'] / n:.2f}", f"{r['manager_writes']:,}",
                     f"{r['apiserver_writes']:,.0f}", f"{r['cpu_s']:.2f} s" if r["cpu_s"] is not None else "–",
                     fmt_bytes(r["peak_rss"])])
    md = [
        "## 6. Node warm-up gate",
        "",
        stamp(),
        "",
        f"N KWOK nodes are created at once (16 parallel clients) carrying the gate taint while kwarm"
        f" runs with `NODE_GATE_TAINT` and {m} images; the driver polls the nodes every 0.5 s and"
        " records, per node, the time from its create call returning to the first poll that finds the"
        " taint gone. Manager requests are counted exactly through a counting `kubectl proxy`"
        " from the moment the nodes start to join; \"API server writes\" is the delta of mutating"
        " `apiserver_request_total` (all clients: the DaemonSet controller's pod creates dominate).",
        "",
        table(["nodes", "released", "join → released p50", "p99", "max", "node patches per node (of which 422: list moved)",
               "Events per node", "manager writes", "API server writes", "manager CPU", "manager peak RSS"], rows),
        "",
        "A node is released once its holder pod runs every image, so join → released is bound by the"
        " DaemonSet controller (pod creates at its client rate limit), the scheduler and KWOK marking"
        " the pods Running; kwarm's part is one JSON patch per node (test key and effect, remove) and"
        " one Event. Events are counted up to the moment the last node opened (the manager is stopped"
        " then; its Event sender works through its queue one Event at a time, behind the patches)."
        " No peer gates nodes on warm images, so there is nothing to compare side by side.",
    ]
    write_section("gate", "\n".join(md), results)
