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


def footprint_run(ns, count, pool, idle, binary=None, wrap=None, name=None):
    # each run starts from no DaemonSet, so that it lists, computes and applies
    kube.delete(f"/apis/apps/v1/namespaces/{ns}/daemonsets/bench-fp")
    for _ in range(60):
        if kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/bench-fp", allow=(404,)) is None:
            break
        time.sleep(0.5)
    proxy = CountingProxy(name or f"fp-{count}")
    km = Kwarm(name or f"fp-{count}", {"NAMESPACE": ns, "DAEMONSET_NAME": "bench-fp", "WATCH_DEPLOYMENTS": "true",
                                       "WATCH_NAMESPACES": ns, "NODE_SELECTOR": json.dumps({"kwarm-bench": "no-such-node"})},
               binary=binary, kubeconfig=proxy.kubeconfig, wrap=wrap)
    res = {"count": count}
    try:
        deadline = time.monotonic() + 600
        synced = None
        samples = []
        while time.monotonic() < deadline:
            if not km.alive():
                raise RuntimeError(f"kwarm exited; log:\n{km.tail()}")
            watched = km.metric("kwarm_watched_deployments")
            applies = km.metric("kwarm_daemonset_applies_total")
            samples.append((time.monotonic() - km.t_start, proc_status(km.pid).get("VmRSS"), proc_cpu_seconds(km.pid)))
            if watched >= count and applies >= 1:
                ds = kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/bench-fp", allow=(404,))
                if ds and len(ds_images(ds)) == pool:
                    synced = time.monotonic() - km.t_start
                    break
            time.sleep(0.25)
        if synced is None:
            raise RuntimeError(f"kwarm did not sync {count} Deployments; log:\n{km.tail()}")
        cpu_sync = proc_cpu_seconds(km.pid)
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
        # after the sync the manager may still be writing (Events): wait until the proxy has seen
        # no request for 3 s (at most 10 min) and count everything up to then
        n_req, last_change, quiet = -1, time.monotonic(), None
        while time.monotonic() - km.t_start < synced + 600:
            n = len(proxy.requests())
            if n != n_req:
                n_req, last_change = n, time.monotonic()
            elif time.monotonic() - last_change >= 3:
                quiet = last_change - km.t_start
                break
            time.sleep(0.5)
        st = proc_status(km.pid)
        reqs = proxy.requests()
        res.update({"seconds_to_sync": synced, "cpu_s_to_sync": cpu_sync, "rss": st.get("VmRSS"),
                    "peak_rss": st.get("VmHWM"), "rss_anon": st.get("RssAnon"),
                    "seconds_to_quiet": quiet, "cpu_s_to_quiet": proc_cpu_seconds(km.pid),
                    "requests_to_quiet": count_verbs(reqs),
                    "event_posts": sum(1 for r in reqs if r[0] == "POST" and "/events" in r[1])})
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



def section_footprint():
    check_cluster()
    counts = env_list("BENCH_DEPLOYMENTS", "1000 10000")
    idle = env_int("BENCH_IDLE", 600)
    pool = 50
    ns = "kwarm-bench-fp"
    ensure_ns(ns)
    runs, created, prof = [], 0, None
    try:
        for i, count in enumerate(counts):
            log(f"footprint: {count} Deployments")
            create_deployments(ns, created, count, pool)
            created = count
            runs.append(footprint_run(ns, count, pool, idle if i == 0 else 0))
            log(f"  -> sync {runs[-1]['seconds_to_sync']:.1f}s, CPU {runs[-1]['cpu_s_to_sync']:.2f}s, "
                f"quiet {runs[-1]['seconds_to_quiet']}s, RSS {runs[-1]['rss'] / 1e6:.1f} MB")
        if KWARM_PROFILE and os.path.exists(KWARM_PROFILE) and perf_available() and os.environ.get("BENCH_PROFILE", "1") == "1":
            data = os.path.join(WORK, "perf-footprint.data")
            log(f"profile: perf record of the initial sync of {created} Deployments")
            prof = footprint_run(ns, created, pool, 0, binary=KWARM_PROFILE, name="fp-profile",
                                 wrap=["perf", "record", "-F", "999", "-g", "--call-graph", "dwarf,16384", "-o", data])
            prof.update(perf_reports(data))
    finally:
        delete_ns(ns, wait=900)
    rows = []
    for r in runs:
        reqs = r["requests_to_quiet"]
        q = r["seconds_to_quiet"]
        rows.append([f"{r['count']:,}", f"{r['seconds_to_sync']:.1f} s", f"{r['cpu_s_to_sync']:.2f} s",
                     f"{q:.1f} s" if q is not None else "> 10 min", f"{r['cpu_s_to_quiet']:.2f} s",
                     fmt_bytes(r["rss"]), fmt_bytes(r["peak_rss"]),
                     ", ".join(f"{k} {v}" for k, v in sorted(reqs.items())), r["event_posts"],
                     f"{fmt_ms(r['change_after_sync_ms'])} ms" if r.get("change_after_sync_ms") else "> 10 min"])
        rows.append([f"{r['count']:,}", "seed's Go manager: not built", "", "", "", "", "", "", "", ""])
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
        table(["Deployments", "start → synced", "CPU to sync", "start → quiet", "CPU to quiet", "RSS at quiet",
               "peak RSS", "manager requests to quiet", "of which Event POSTs", "a change right after sync → DaemonSet"], rows),
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
    md += ["The seed's Go manager (`github.com/bcfmtolgahan/kwarm`) is not built: the Go module proxy"
           " refuses the module (403) and its go.mod declares another module path"
           " (`github.com/kwarm/kwarm`)."]
    data = {"runs": runs, "profile": prof}
    if prof:
        md += ["", "### Profile of the initial sync",
               "", f"`perf record -g` (DWARF unwinding) of a symbolized build of the same source during the sync"
               f" of {prof['count']:,} Deployments ({prof['seconds_to_sync']:.1f} s, {prof['cpu_s_to_sync']:.2f} s CPU"
               " under perf). Self time by symbol (top):", "", "```",
               *[trunc(l) for l in prof["perf_top"][:25]], "```", "",
               "Inclusive time, frames of kwarm and of the libraries it calls directly:", "", "```",
               *[trunc(l) for l in prof["perf_children"] if re.search(r"kwarm::|oci_spec|serde_json|kube_|k8s_openapi|regex::", l)][:25],
               "```"]
    write_section("footprint", "\n".join(md), data)
