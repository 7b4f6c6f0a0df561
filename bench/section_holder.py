"""Benchmark section: holder cost (kwarm's sleep against kubernetes-image-puller's)."""
from common import *  # noqa: F401,F403 (settings, helpers and the modules they use)


def holder_pod(n):
    containers = []
    for i in range(n):
        sc = {"runAsUser": 65532, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
              "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
        containers.append({"name": f"kwarm-{i}", "image": KIP_IMAGE, "command": ["/sleep", "infinity"],
                           "securityContext": sc})
        containers.append({"name": f"go-{i}", "image": PULLER_SLEEP_IMAGE, "command": ["/sleep", "720h"],
                           "securityContext": sc})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "holders"},
            "spec": {"nodeName": REAL_NODE, "restartPolicy": "Never", "automountServiceAccountToken": False,
                     "terminationGracePeriodSeconds": 1, "containers": containers}}


def sigterm_ms(pid):
    """Send SIGTERM from the host and wait (pidfd) until the process has exited."""
    fd = os.pidfd_open(pid)
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGTERM)
        if not p.poll(10_000):
            return None
        return (time.perf_counter() - t0) * 1000
    finally:
        os.close(fd)


def cgroup_memory(pid):
    """Memory charged to the process's container cgroup (v2 memory.current, v1 usage_in_bytes)."""
    try:
        for line in open(f"/proc/{pid}/cgroup"):
            num, ctrls, path = line.strip().split(":", 2)
            for f in (f"/sys/fs/cgroup{path}/memory.current", f"/sys/fs/cgroup/unified{path}/memory.current",
                      f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes"):
                if ("memory" in ctrls.split(",") or num == "0") and os.path.exists(f):
                    return int(open(f).read())
    except OSError:
        return None
    return None


def section_holder():
    n = env_int("BENCH_HOLDER_SAMPLES", 20)
    ns = "kwarm-bench-holder"
    if not PULLER_SLEEP:
        raise RuntimeError(f"no kubernetes-image-puller sleep to compare with: {PULLER_SLEEP_MISSING}")
    check_cluster()
    ensure_ns(ns)
    try:
        kube.delete(f"/api/v1/namespaces/{ns}/pods/holders")
        for _ in range(60):
            if kube.get(f"/api/v1/namespaces/{ns}/pods/holders", allow=(404,)) is None:
                break
            time.sleep(1)
        kube.post(f"/api/v1/namespaces/{ns}/pods", holder_pod(n))
        deadline = time.monotonic() + 180
        while True:
            pod = kube.get(f"/api/v1/namespaces/{ns}/pods/holders")
            sts = pod.get("status", {}).get("containerStatuses") or []
            if len(sts) == 2 * n and all("running" in (s.get("state") or {}) for s in sts):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"holder pod not running: {json.dumps(pod.get('status'))[:800]}")
            time.sleep(0.5)
        time.sleep(2)  # let the processes settle after start
        pids = ctr_task_pids()
        procs = {}
        for s in sts:
            cid = s["containerID"].split("://", 1)[1]
            procs[s["name"]] = pids[cid]
        mem = {"kwarm": [], "go": []}
        for name, pid in procs.items():
            kind = name.split("-")[0]
            st = proc_status(pid)
            smaps = {}
            for line in open(f"/proc/{pid}/smaps_rollup"):
                k, _, v = line.partition(":")
                if v.strip().endswith("kB"):
                    smaps[k] = int(v.split()[0]) * 1024
            mem[kind].append({"VmRSS": st.get("VmRSS"), "RssAnon": st.get("RssAnon"), "RssFile": st.get("RssFile"),
                              "Pss": smaps.get("Pss"), "VmSize": st.get("VmSize"), "cgroup": cgroup_memory(pid),
                              "threads": int(re.search(r"Threads:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))})
        term = {"kwarm": [], "go": []}
        for i in range(n):  # alternate the kinds so that load drifts hit both alike
            for kind in ("kwarm", "go"):
                ms = sigterm_ms(procs[f"{kind}-{i}"])
                if ms is not None:
                    term[kind].append(ms)
        time.sleep(2)
        pod = kube.get(f"/api/v1/namespaces/{ns}/pods/holders")
        exits = {"kwarm": set(), "go": set()}
        for s in pod["status"].get("containerStatuses") or []:
            t = (s.get("state") or {}).get("terminated")
            if t:
                exits[s["name"].split("-")[0]].add(t.get("exitCode"))
    finally:
        delete_ns(ns, wait=60)

    def med(kind, key):
        vals = [m[key] for m in mem[kind] if m[key] is not None]
        return statistics.median(vals) if vals else None

    sizes = {"kwarm": os.path.getsize(SLEEP_BIN), "go": os.path.getsize(PULLER_SLEEP)}
    tk, tg = summary(term["kwarm"]), summary(term["go"])
    md = [
        "## 1. Holder cost",
        "",
        stamp(),
        "",
        f"One pod on the real node ({REAL_NODE}) with {n} holder containers of each kind, each holder"
        " its container's PID 1 (as in a DaemonSet pod); memory read from `/proc/PID/status` and"
        " `smaps_rollup` of the holder process (found through `ctr tasks ls`), median over the"
        f" {n}. SIGTERM sent from the host to one holder at a time; time until the process has"
        " exited (pidfd poll).",
        "",
        table(["", "kwarm `sleep`", "kubernetes-image-puller `sleep`", "ratio"], [
            ["binary size", fmt_bytes(sizes["kwarm"]), fmt_bytes(sizes["go"]), ratio(sizes["go"], sizes["kwarm"])],
            ["RSS (VmRSS)", fmt_bytes(med("kwarm", "VmRSS")), fmt_bytes(med("go", "VmRSS")),
             ratio(med("go", "VmRSS"), med("kwarm", "VmRSS"))],
            ["of which anonymous", fmt_bytes(med("kwarm", "RssAnon")), fmt_bytes(med("go", "RssAnon")),
             ratio(med("go", "RssAnon"), med("kwarm", "RssAnon"))],
            ["PSS", fmt_bytes(med("kwarm", "Pss")), fmt_bytes(med("go", "Pss")), ratio(med("go", "Pss"), med("kwarm", "Pss"))],
            ["virtual size", fmt_bytes(med("kwarm", "VmSize")), fmt_bytes(med("go", "VmSize")),
             ratio(med("go", "VmSize"), med("kwarm", "VmSize"))],
            ["container cgroup memory", fmt_bytes(med("kwarm", "cgroup")), fmt_bytes(med("go", "cgroup")),
             ratio(med("go", "cgroup"), med("kwarm", "cgroup"))],
            ["threads", int(med("kwarm", "threads")), int(med("go", "threads")), ""],
            [f"SIGTERM → exit, p50 (n={tk['n']}/{tg['n']})", f"{fmt_ms(tk['p50'])} ms", f"{fmt_ms(tg['p50'])} ms",
             ratio(tg["p50"], tk["p50"])],
            ["SIGTERM → exit, max", f"{fmt_ms(tk['max'])} ms", f"{fmt_ms(tg['max'])} ms", ""],
            ["exit code on SIGTERM (as PID 1)", ", ".join(map(str, sorted(exits["kwarm"]))) or "–",
             ", ".join(map(str, sorted(exits["go"]))) or "–", ""],
        ]),
        "",
        "The puller's holder is its own `sleep/sleep.go`, built from its source archive by"
        " `hack/peers.sh` as its Makefile builds it (`CGO_ENABLED=0 go build -a -ldflags '-w -s'`, with"
        " the local Go), in an image of its own (FROM scratch, the binary alone). Its size and memory"
        " are the Go runtime's.",
    ]
    write_section("holder", "\n".join(md), {"sizes": sizes, "memory": mem, "sigterm_ms": term,
                                            "exit_codes": {k: sorted(v) for k, v in exits.items()}})
