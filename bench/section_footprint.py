"""Benchmark section: manager footprint with many watched Deployments."""
from common import *  # noqa: F401,F403 (settings, helpers and the modules they use)


def create_deployments(ns, start, end, pool):
    t0 = time.monotonic()
    with ThreadPoolExecutor(24) as ex:
        list(ex.map(lambda i: kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments",
                                        deployment(f"d{i:05d}", f"{REG}/kwarm-bench/fp-{i % pool:02d}:v1"), allow=(409,)),
                    range(start, end)))
    dt = time.monotonic() - t0
    log(f"  created Deployments {start}..{end} in {dt:.0f}s ({(end - start) / dt:.0f}/s)")
    return dt


def footprint_run(ns, count, pool, idle, binary=None, wrap=None, name=None, env=None):
    # each run starts from no DaemonSet, so that it lists, computes and applies
    kube.delete(f"/apis/apps/v1/namespaces/{ns}/daemonsets/bench-fp")
    for _ in range(60):
        if kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/bench-fp", allow=(404,)) is None:
            break
        time.sleep(0.5)
    proxy = CountingProxy(name or f"fp-{count}")
    km = Kwarm(name or f"fp-{count}", {"NAMESPACE": ns, "DAEMONSET_NAME": "bench-fp", "WATCH_DEPLOYMENTS": "true",
                                       "WATCH_NAMESPACES": ns, "NODE_SELECTOR": json.dumps({"kwarm-bench": "no-such-node"}),
                                       # the pool's tags are not in a registry: this section is the Deployment watch
                                       "DIGEST_CHECK_INTERVAL": "0", **(env or {})},
               binary=binary, kubeconfig=proxy.kubeconfig, wrap=wrap)
    res = {"count": count}
    try:
        def kwarm_synced():
            if km.metric("kwarm_watched_deployments") < count or km.metric("kwarm_daemonset_applies_total") < 1:
                return False
            ds = kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/bench-fp", allow=(404,))
            return bool(ds) and len(ds_images(ds)) == pool

        synced, cpu_sync = wait_synced(km, kwarm_synced, f"kwarm did not sync {count} Deployments")
        # a user changes one Deployment right after the sync: how long until the DaemonSet has it
        # (the manager may still be busy with its start-up writes)
        probe_image = f"{REG}/kwarm-bench/fp-probe:{int(time.time())}"
        tp = time.monotonic()
        kube.merge_patch(f"/apis/apps/v1/namespaces/{ns}/deployments/d00000",
                         {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": probe_image}]}}}})
        change_ms = None
        while time.monotonic() - tp < 600:
            ds = kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/bench-fp", allow=(404,))
            if ds and probe_image in ds_images(ds):
                change_ms = (time.monotonic() - tp) * 1000
                break
            time.sleep(0.05)
        res["change_after_sync_ms"] = change_ms
        res.update(after_sync(km, proxy, synced, cpu_sync))
        if idle:
            log(f"  idle window: {idle}s")
            mark = proxy.mark()
            a0 = km.metric("kwarm_daemonset_applies_total")
            c0 = proc_cpu_seconds(km.pid)
            time.sleep(idle)
            reqs = proxy.requests(mark)
            res["idle"] = {"seconds": idle, "applies": km.metric("kwarm_daemonset_applies_total") - a0,
                           "requests": count_verbs(reqs), "writes": sum(1 for r in reqs if r[0] in WRITE_VERBS),
                           "write_urls": [f"{r[0]} {r[1]}" for r in reqs if r[0] in WRITE_VERBS][:20],
                           "cpu_s": proc_cpu_seconds(km.pid) - c0, "rss_after": proc_status(km.pid).get("VmRSS")}
    finally:
        km.stop()
        proxy.stop()
        kube.merge_patch(f"/apis/apps/v1/namespaces/{ns}/deployments/d00000",
                         {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": f"{REG}/kwarm-bench/fp-00:v1"}]}}}})
    return res


def seed_footprint_run(ns, count, peer):
    """The kwarm seed's manager watching the same Deployments: one PrePullPolicy selecting them
    (`kwarm.io/enabled=true` in ns) and nodes that do not exist, so it reads and decides on every
    Deployment but creates nothing. Synced: its Deployment controller has reconciled each one
    (controller-runtime's own metrics) and its queue is empty."""
    seed_policy("bench-fp", ns, {"kwarm-bench": "no-such-node"})
    proxy = CountingProxy(f"fp-seed-{count}")
    proc = seed_process(f"seed-fp-{count}", peer, proxy.kubeconfig)
    res = {"count": count}
    try:
        def seed_synced():
            m = proc.metrics()
            done = sum(v for k, v in m.items()
                       if k.startswith("controller_runtime_reconcile_total{") and 'controller="deployment"' in k)
            depth = sum(v for k, v in m.items() if k.startswith("workqueue_depth{") and 'name="deployment"' in k)
            return done >= count and depth == 0

        synced, cpu_sync = wait_synced(proc, seed_synced, f"the seed did not reconcile {count} Deployments")
        res.update(after_sync(proc, proxy, synced, cpu_sync))
    finally:
        proc.stop()
        proxy.stop()
        kube.delete(f"{SEED_API}/prepullpolicies/bench-fp")
    return res


def wait_synced(proc, is_synced, failure, timeout=600):
    """Poll is_synced() every 0.25 s -> (seconds from the manager's start, its CPU seconds then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited; log:\n{proc.tail()}")
        if is_synced():
            return time.monotonic() - proc.t_start, proc_cpu_seconds(proc.pid)
        time.sleep(0.25)
    raise RuntimeError(f"{failure}; log:\n{proc.tail()}")


def after_sync(proc, proxy, synced, cpu_sync):
    """A manager's figures once it has gone quiet after its sync: time, CPU, memory, requests."""
    quiet = wait_quiet(proxy, proc.t_start, synced)
    st = proc_status(proc.pid)
    reqs = proxy.requests()
    return {"seconds_to_sync": synced, "cpu_s_to_sync": cpu_sync, "rss": st.get("VmRSS"),
            "peak_rss": st.get("VmHWM"), "rss_anon": st.get("RssAnon"), "threads": st.get("Threads"),
            "seconds_to_quiet": quiet, "cpu_s_to_quiet": proc_cpu_seconds(proc.pid),
            "requests_to_quiet": count_verbs(reqs),
            "event_posts": sum(1 for r in reqs if r[0] == "POST" and "/events" in r[1])}


def wait_quiet(proxy, t_start, synced):
    """After the sync a manager may still be writing (Events): wait until the proxy has seen no
    request for 3 s (at most 10 min) -> seconds from start to its last request, or None."""
    n_req, last_change = -1, time.monotonic()
    while time.monotonic() - t_start < synced + 600:
        n = len(proxy.requests())
        if n != n_req:
            n_req, last_change = n, time.monotonic()
        elif time.monotonic() - last_change >= 3:
            return last_change - t_start
        time.sleep(0.5)
    return None



def section_footprint():
    check_cluster()
    counts = env_list("BENCH_DEPLOYMENTS", "1000 10000")
    idle = env_int("BENCH_IDLE", 600)
    pool = 50
    ns = "kwarm-bench-fp"
    # a namespace an earlier (interrupted) run left holds Deployments that would count toward
    # every row here: start from none
    delete_ns(ns, wait=900)
    ensure_ns(ns)
    runs, seed_runs, created, prof = [], [], 0, None
    seed = peers()["seed"]
    crds = seed_crds(seed) if seed.binary else []
    try:
        for path in crds:
            apply_crd(path)
        for i, count in enumerate(counts):
            log(f"footprint: {count} Deployments")
            create_deployments(ns, created, count, pool)
            created = count
            runs.append(footprint_run(ns, count, pool, idle if i == 0 else 0))
            log(f"  -> sync {runs[-1]['seconds_to_sync']:.1f}s, CPU {runs[-1]['cpu_s_to_sync']:.2f}s, "
                f"quiet {runs[-1]['seconds_to_quiet']}s, RSS {runs[-1]['rss'] / 1e6:.1f} MB")
            if seed.binary:
                log(f"footprint: the seed's manager, {count} Deployments")
                seed_runs.append(seed_footprint_run(ns, count, seed))
                log(f"  -> sync {seed_runs[-1]['seconds_to_sync']:.1f}s, CPU {seed_runs[-1]['cpu_s_to_sync']:.2f}s, "
                    f"RSS {seed_runs[-1]['rss'] / 1e6:.1f} MB")
        if KWARM_PROFILE and os.path.exists(KWARM_PROFILE) and perf_available() and os.environ.get("BENCH_PROFILE", "1") == "1":
            data = os.path.join(WORK, "perf-footprint.data")
            log(f"profile: perf record of the initial sync of {created} Deployments")
            prof = footprint_run(ns, created, pool, 0, binary=KWARM_PROFILE, name="fp-profile",
                                 wrap=["perf", "record", "-F", "999", "-g", "--call-graph", "dwarf,16384", "-o", data])
            prof.update(perf_reports(data))
    finally:
        delete_ns(ns, wait=900)
        for path in crds:
            delete_crd(path)

    def row(tool, r):
        reqs = r["requests_to_quiet"]
        q = r["seconds_to_quiet"]
        change = r.get("change_after_sync_ms")
        return [f"{r['count']:,}", tool, f"{r['seconds_to_sync']:.1f} s", f"{r['cpu_s_to_sync']:.2f} s",
                f"{q:.1f} s" if q is not None else "> 10 min", f"{r['cpu_s_to_quiet']:.2f} s",
                fmt_bytes(r["rss"]), fmt_bytes(r["peak_rss"]), r.get("threads", ""),
                ", ".join(f"{k} {v}" for k, v in sorted(reqs.items())), r["event_posts"],
                "–" if "change_after_sync_ms" not in r else f"{fmt_ms(change)} ms" if change else "> 10 min"]
    rows = []
    for i, r in enumerate(runs):
        rows.append(row("kwarm", r))
        if i < len(seed_runs):
            rows.append(row("kwarm seed", seed_runs[i]))
        else:
            rows.append([f"{r['count']:,}", "kwarm seed", f"not run: {seed.reason}"] + [""] * 9)
    ratios = [f"{r['count']:,} Deployments: RSS {ratio(s['rss'], r['rss'])}, CPU to quiet"
              f" {ratio(s['cpu_s_to_quiet'], r['cpu_s_to_quiet'])}, manager requests"
              f" {ratio(sum(s['requests_to_quiet'].values()), sum(r['requests_to_quiet'].values()))}"
              for r, s in zip(runs, seed_runs)]
    md = [
        "## 5. Manager footprint",
        "",
        stamp(),
        "",
        f"Deployments (replicas 0, `kwarm.io/enabled=true`, images from a pool of {pool}) created"
        " first, then the manager started; \"synced\" is `kwarm_watched_deployments` reaching the count"
        f" and the DaemonSet holding all {pool} images. CPU is user+system time of the manager process"
        " from start to synced (and to quiet); RSS read at quiet.",
        "",
        table(["Deployments", "manager", "start → synced", "CPU to sync", "start → quiet", "CPU to quiet", "RSS at quiet",
               "peak RSS", "threads", "manager requests to quiet", "of which Event POSTs",
               "a change right after sync → DaemonSet"], rows),
        "",
        *([f"Ratios (seed ÷ kwarm): {'; '.join(ratios)}.", ""] if ratios else []),
        "The kwarm seed (its source archive, built by `hack/peers.sh`; its controller-runtime manager"
        " out of cluster through a counting proxy) watches the same Deployments through one"
        " PrePullPolicy selecting them, with a node selector that matches no node, so it reads and"
        " decides on every Deployment and creates nothing; \"synced\" is its Deployment controller having"
        " reconciled each one (`controller_runtime_reconcile_total`) with an empty queue. It keeps no"
        " DaemonSet, so the last column is kwarm's only.",
        "",
        "\"Quiet\" is when the manager's last request of the start-up went through the counting proxy"
        " (no request for 3 s after it). The last column: one Deployment's image is changed as soon as"
        " the sync is seen; time until the DaemonSet carries the new image (compare with section 4's"
        " p50 on an idle manager).",
        "",
    ]
    idle_run = next((r for r in runs if "idle" in r), None)
    if idle_run:
        d = idle_run["idle"]
        md += [
            f"**Idle:** {d['seconds']} s with {idle_run['count']:,} watched Deployments and nothing changing:"
            f" {d['applies']:.0f} DaemonSet applies (`kwarm_daemonset_applies_total` delta), {d['writes']} API"
            f" writes and {sum(d['requests'].values())} requests in all through the counting proxy"
            f" ({', '.join(f'{k} {v}' for k, v in sorted(d['requests'].items())) or 'none'}),"
            f" {d['cpu_s']:.2f} s CPU.",
            "",
        ]
    data = {"runs": runs, "seed": seed_runs, "seed_commit": seed.commit, "profile": prof}
    if prof:
        md += ["### Profile of the initial sync",
               "", f"`perf record -g` (DWARF unwinding) of a symbolized build of the same source during the sync"
               f" of {prof['count']:,} Deployments ({prof['seconds_to_sync']:.1f} s, {prof['cpu_s_to_sync']:.2f} s CPU"
               " under perf). Self time by symbol (top):", "", "```",
               *[trunc(l) for l in prof["perf_top"][:25]], "```", "",
               "Inclusive time, frames of kwarm and of the libraries it calls directly:", "", "```",
               *[trunc(l) for l in prof["perf_children"] if re.search(r"kwarm::|oci_spec|serde_json|kube_|k8s_openapi|regex::", l)][:25],
               "```"]
    write_section("footprint", "\n".join(md), data)
