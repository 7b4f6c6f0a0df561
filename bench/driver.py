#!/usr/bin/env python3
"""kwarm benchmark driver, run by hack/bench.sh (which builds and pushes what it needs first).

    python3 bench/driver.py SECTION     SECTION: holder image warmup reaction footprint

Each section measures, prints progress on stderr and writes bench/sections/SECTION.md (the
Markdown that hack/bench.sh merges into bench/RESULTS.md) and SECTION.json (raw numbers).
Everything it creates in the cluster is its own: namespaces kwarm-bench-*, fake nodes
bench-node-*; it removes them at the end of a section (also on failure).
Settings come from the environment (see hack/bench.sh for the list and defaults).
"""
import json
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kube import ApiError, Kube  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
SECTIONS = os.path.join(BENCH, "sections")
WORK = os.path.join(ROOT, "_output", "bench")
KUBECONFIG = os.environ.get("KUBECONFIG", "/var/lib/kwarm-cluster/kubeconfig")
CTR_SOCK = os.environ.get("CONTAINERD_SOCK", "/var/lib/kwarm-cluster/containerd/containerd.sock")
KUBECTL = os.environ["KUBECTL"]
KWARM = os.environ.get("KWARM_BIN", os.path.join(ROOT, "_output", "bin", "kwarm"))
KWARM_PROFILE = os.environ.get("KWARM_PROFILE_BIN", "")
SLEEP_BIN = os.path.join(ROOT, "_output", "bin", "sleep")
GOSLEEP = os.environ.get("GOSLEEP_BIN", "")
GOSLEEP_STRIPPED = os.environ.get("GOSLEEP_STRIPPED_BIN", "")
REG = "127.0.0.1:5000"
KIP_IMAGE = os.environ.get("KIP_IMAGE", f"{REG}/kwarm/sleep:dev")
GOSLEEP_IMAGE = os.environ.get("GOSLEEP_IMAGE", "")
PULLER_FLOOR_IMAGE = os.environ.get("PULLER_FLOOR_IMAGE", "")
PULL_IMAGES = os.environ.get("PULL_IMAGES", "")  # "size:ref size:ref ..."
REAL_NODE = "127.0.0.1"
NODE_PREFIX = "bench-node-"
NODE_LABEL = ("kwarm-bench", "nodes")
ENABLED = ("kwarm.io/enabled", "true")

kube = Kube(KUBECONFIG)


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_list(name, default):
    return [int(x) for x in os.environ.get(name, default).split()]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- statistics and Markdown

def pct(values, p):
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.4999)) - 1))
    return s[k]


def summary(values):
    return {
        "n": len(values),
        "min": min(values) if values else None,
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values) if values else None,
        "mean": statistics.fmean(values) if values else None,
    }


def fmt_ms(v):
    if v is None or v != v:
        return "–"
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def fmt_bytes(n):
    if n is None:
        return "–"
    n = int(n)
    if n < 10 * 1024:
        return f"{n:,} B"
    if n < 10 * 1024 * 1024:
        return f"{n / 1024:,.1f} KiB"
    return f"{n / 1024 / 1024:,.1f} MiB"


def ratio(a, b):
    if not a or not b:
        return "–"
    r = a / b
    return f"{r:,.0f}×" if r >= 10 else f"{r:,.1f}×"


def trunc(line, width=150):
    line = line.rstrip(" -")
    return line if len(line) <= width else line[:width - 1] + "…"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def write_section(name, md, data):
    os.makedirs(SECTIONS, exist_ok=True)
    with open(os.path.join(SECTIONS, f"{name}.md"), "w") as f:
        f.write(md.rstrip() + "\n")
    with open(os.path.join(SECTIONS, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
    log(f"wrote bench/sections/{name}.md")


def stamp():
    load = open("/proc/loadavg").read().split()[:3]
    build = os.environ.get("KWARM_BUILD", "")
    return (f"_Measured {time.strftime('%Y-%m-%d %H:%M %Z')}, load average at start {' '.join(load)}"
            + (f"; kwarm {build}" if build else "") + "._")


# ---------------------------------------------------------------- processes

def _die_with_parent():
    """In the child: get SIGTERM when the driver dies, however it dies (no orphans)."""
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            v = v.strip()
            if v.endswith(" kB"):
                out[k] = int(v[:-3]) * 1024
    return out


class Kwarm:
    """The manager as a child process with its own metrics/health ports and log file."""

    def __init__(self, name, env, binary=None, kubeconfig=KUBECONFIG, wrap=None):
        self.name = name
        self.metrics_port = free_port()
        self.health_port = free_port()
        os.makedirs(WORK, exist_ok=True)
        self.log_path = os.path.join(WORK, f"kwarm-{name}.log")
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "KUBECONFIG": kubeconfig,
            "KIP_IMAGE": KIP_IMAGE,
            "LEADER_ELECT": "false",
            "METRICS_BIND_ADDRESS": f"127.0.0.1:{self.metrics_port}",
            "HEALTH_PROBE_BIND_ADDRESS": f"127.0.0.1:{self.health_port}",
            "RUST_LOG": "info",
        }
        full.update(env)
        cmd = [binary or KWARM]
        if wrap:
            cmd = wrap + cmd
        self.logf = open(self.log_path, "w")
        self.t_start = time.monotonic()
        self.p = subprocess.Popen(cmd, env=full, stdout=self.logf, stderr=subprocess.STDOUT,
                                  preexec_fn=_die_with_parent)
        self.pid = self.p.pid
        if wrap:  # the manager is a child of the wrapper (perf): find it
            for _ in range(100):
                kids = subprocess.run(["pgrep", "-P", str(self.p.pid)], capture_output=True, text=True).stdout.split()
                if kids:
                    self.pid = int(kids[0])
                    break
                time.sleep(0.05)

    def metrics(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def metric(self, prefix):
        return sum(v for k, v in self.metrics().items() if k == prefix or k.startswith(prefix + "{"))

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()

    def tail(self, n=20):
        try:
            return "".join(open(self.log_path).readlines()[-n:])
        except OSError:
            return ""


class CountingProxy:
    """`kubectl proxy -v=6` on a free loopback port: the manager talks to the API server through
    it (plain HTTP on loopback, the proxy adds the admin credentials), and the proxy's log names
    every request it forwarded, so this client's requests are counted exactly even while other
    clients use the same API server."""

    LINE = re.compile(r'"Response" verb="(\w+)" url="([^"]+)" status="(\d+)')

    def __init__(self, name):
        self.port = free_port()
        os.makedirs(WORK, exist_ok=True)
        self.log_path = os.path.join(WORK, f"proxy-{name}.log")
        self.kubeconfig = os.path.join(WORK, f"proxy-{name}.kubeconfig")
        with open(self.kubeconfig, "w") as f:
            f.write(
                "apiVersion: v1\nkind: Config\n"
                f"clusters: [{{name: p, cluster: {{server: 'http://127.0.0.1:{self.port}'}}}}]\n"
                "users: [{name: p, user: {}}]\n"
                "contexts: [{name: p, context: {cluster: p, user: p}}]\ncurrent-context: p\n"
            )
        self.logf = open(self.log_path, "w")
        self.p = subprocess.Popen(
            [KUBECTL, "--kubeconfig", KUBECONFIG, "proxy", "--address=127.0.0.1", f"--port={self.port}", "-v=6"],
            stdout=self.logf, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("kubectl proxy did not start")

    def mark(self):
        """A position in the log: count(since=mark) counts what came after."""
        self.logf.flush()
        return os.path.getsize(self.log_path)

    def requests(self, since=0):
        """-> list of (verb, url, status), the watch verb for ?watch= requests."""
        out = []
        with open(self.log_path) as f:
            f.seek(since)
            for line in f:
                m = self.LINE.search(line)
                if m:
                    verb, url, status = m.group(1), m.group(2), m.group(3)
                    if verb == "GET" and re.search(r"[?&]watch=(1|true)", url):
                        verb = "WATCH"
                    elif verb == "GET" and not re.search(r"/namespaces/[^/]+/[^/?]+/[^/?]+(\?|$)", url) \
                            and not re.search(r"/api/v1/nodes/[^/?]+", url):
                        verb = "LIST/GET"
                    out.append((verb, url, status))
        return out

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            self.p.wait(10)
        self.logf.close()


def count_verbs(reqs):
    out = {}
    for verb, _, _ in reqs:
        out[verb] = out.get(verb, 0) + 1
    return out


WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE"}


def apiserver_counts():
    """Sum of apiserver_request_total (all clients) -> (all, mutating)."""
    total = writes = 0
    for line in kube.metrics_text().splitlines():
        if line.startswith("apiserver_request_total{"):
            v = float(line.rsplit(" ", 1)[1])
            total += v
            m = re.search(r'verb="(\w+)"', line)
            if m and m.group(1) in WRITE_VERBS:
                writes += v
    return total, writes


# ---------------------------------------------------------------- cluster helpers

def check_cluster():
    try:
        status, body = kube.raw("GET", "/readyz", accept="text/plain")
        if status != 200:
            raise RuntimeError(f"/readyz: {status} {body[:200]!r}")
    except Exception as e:  # noqa: BLE001
        sys.exit(f"bench: the local cluster does not answer ({e}); `make cluster-up` starts it")


def ensure_ns(name):
    kube.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"kwarm-bench": "true"}}}, allow=(409,))
    for _ in range(100):  # a namespace still terminating from an earlier run
        ns = kube.get(f"/api/v1/namespaces/{name}", allow=(404,))
        if ns and ns["status"].get("phase") == "Active":
            return
        if ns is None:
            kube.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": name, "labels": {"kwarm-bench": "true"}}}, allow=(409,))
        time.sleep(1)
    raise RuntimeError(f"namespace {name} did not become Active")


def delete_ns(name, wait=300):
    kube.delete(f"/api/v1/namespaces/{name}")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if kube.get(f"/api/v1/namespaces/{name}", allow=(404,)) is None:
            return True
        time.sleep(1)
    log(f"namespace {name} still terminating after {wait}s; going on")
    return False


def kwok_node(name):
    labels = {
        "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux", "kubernetes.io/hostname": name,
        "kubernetes.io/role": "agent", "type": "kwok", NODE_LABEL[0]: NODE_LABEL[1],
    }
    cap = {"cpu": "32", "memory": "256Gi", "pods": "250"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name, "labels": labels,
        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {}, "status": {"allocatable": cap, "capacity": cap}}


def bench_nodes():
    return [n for n in kube.list_all(f"/api/v1/nodes?labelSelector={NODE_LABEL[0]}%3D{NODE_LABEL[1]}")]


def ensure_nodes(count, timeout=600):
    have = {n["metadata"]["name"] for n in bench_nodes()}
    want = [f"{NODE_PREFIX}{i}" for i in range(count)]
    missing = [n for n in want if n not in have]
    t0 = time.monotonic()
    if missing:
        log(f"creating {len(missing)} fake nodes")
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda n: kube.post("/api/v1/nodes", kwok_node(n), allow=(409,)), missing))
    deadline = time.monotonic() + timeout
    while True:
        ready = sum(1 for n in bench_nodes() if n["metadata"]["name"] in set(want) and any(
            c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", [])))
        if ready >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {ready}/{count} fake nodes Ready")
        time.sleep(1)
    log(f"{count} fake nodes Ready ({time.monotonic() - t0:.0f}s)")


def delete_bench_nodes():
    names = [n["metadata"]["name"] for n in kube.list_all("/api/v1/nodes")
             if n["metadata"]["name"].startswith(NODE_PREFIX)]
    if names:
        log(f"deleting {len(names)} fake nodes")
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda n: kube.delete(f"/api/v1/nodes/{n}"), names))


def ds_images(ds):
    return [c["image"] for c in ds["spec"]["template"]["spec"]["containers"]]


def deployment(name, image, labels=None):
    labels = dict(labels or {})
    labels[ENABLED[0]] = ENABLED[1]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}}


def ctr(*args, check=True):
    r = subprocess.run(["ctr", "-a", CTR_SOCK, "-n", "k8s.io", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def ctr_task_pids():
    """container id -> host pid of its task."""
    out = {}
    for line in ctr("tasks", "ls").splitlines()[1:]:
        f = line.split()
        if len(f) >= 3 and f[1].isdigit():
            out[f[0]] = int(f[1])
    return out


# ---------------------------------------------------------------- section: holder

def holder_pod(n):
    containers = []
    for i in range(n):
        sc = {"runAsUser": 65532, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
              "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
        containers.append({"name": f"kwarm-{i}", "image": KIP_IMAGE, "command": ["/sleep", "infinity"],
                           "securityContext": sc})
        containers.append({"name": f"go-{i}", "image": GOSLEEP_IMAGE, "command": ["/sleep", "720h"],
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

    sizes = {"kwarm": os.path.getsize(SLEEP_BIN), "go": os.path.getsize(GOSLEEP),
             "go_stripped": os.path.getsize(GOSLEEP_STRIPPED)}
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
        table(["", "kwarm `sleep`", "Go `sleep` (puller stand-in)", "ratio"], [
            ["binary size", fmt_bytes(sizes["kwarm"]), f"{fmt_bytes(sizes['go'])} ({fmt_bytes(sizes['go_stripped'])} stripped)",
             f"{ratio(sizes['go'], sizes['kwarm'])} ({ratio(sizes['go_stripped'], sizes['kwarm'])})"],
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
        "The Go holder is a stand-in: the Go module proxy refuses"
        " `github.com/che-incubator/kubernetes-image-puller` (`403 Forbidden: This module version is"
        " not available`), so `bench/gosleep` (the same behaviour and the same standard-library"
        " imports: fmt, io, os, time; built with the local Go, `CGO_ENABLED=0 -trimpath`, unstripped"
        " like the puller's `go build`) stands for it. Its size and memory are the Go runtime's.",
    ]
    write_section("holder", "\n".join(md), {"sizes": sizes, "memory": mem, "sigterm_ms": term,
                                            "exit_codes": {k: sorted(v) for k, v in exits.items()}})


# ---------------------------------------------------------------- section: image

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
    kw = registry_image_size(KIP_IMAGE)
    go = registry_image_size(GOSLEEP_IMAGE)
    floor = registry_image_size(PULLER_FLOOR_IMAGE)
    mgr = registry_image_size(os.environ.get("KWARM_IMAGE", f"{REG}/kwarm/kwarm:dev"))
    data = {"kwarm_sleep": kw, "go_sleep_scratch": go, "puller_floor": floor, "kwarm_manager": mgr}
    for label, d, note in [
        ("kwarm `KIP_IMAGE` (kwarm/sleep)", kw, "FROM scratch + the no_std `sleep`; runs `/sleep --copy-to`"),
        ("Go `sleep` alone, FROM scratch", go, "what a Go holder costs at the very least"),
        ("puller init contract, lower bound", floor,
         "FROM scratch + Go `sleep` at /bin/sleep + static busybox for `sh -c cp` (its init container needs a shell)"),
    ]:
        rows.append([label, fmt_bytes(d["total"]), d["n_layers"], ratio(d["total"], kw["total"]), note])
    rows.append(["puller's real `KIP_IMAGE` (its own image)", "not built", "–", "–",
                 "ubi8-minimal base (microdnf, rpm, bash, coreutils…) + the manager binary (client-go) + Go sleep;"
                 " neither the base (no container registry reachable here) nor the module (refused by the Go"
                 " module proxy) can be had here, so it is larger than the lower bound above by the whole base"
                 " image and the manager binary"])
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


# ---------------------------------------------------------------- section: warm-up

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


def perf_reports(data):
    out = {}
    rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "--percent-limit", "1.5",
                          "--sort", "symbol", "-g", "none"], capture_output=True, text=True)
    out["perf_top"] = [line for line in rep.stdout.splitlines() if line.strip() and not line.startswith("#")][:30]
    rep = subprocess.run(["perf", "report", "-i", data, "--children", "--stdio", "--percent-limit", "2",
                          "--sort", "symbol", "-g", "none"], capture_output=True, text=True)
    out["perf_children"] = [line for line in rep.stdout.splitlines() if line.strip() and not line.startswith("#")][:400]
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


# ---------------------------------------------------------------- section: reaction

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
            out.append(sample)
            log(f"  {size}: floor {floor_ms:.0f} ms, kwarm present {sample['present_ms']} ms, held {sample['held_ms']} ms")
            if not ev_held:
                log(f"holder for {ref} not ready; log:\n{km.tail()}")
        return out
    finally:
        if km:
            km.stop()
        events.stop()
        delete_ns(ns, wait=120)
        time.sleep(2)
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


def section_reaction():
    check_cluster()
    samples = env_int("BENCH_REACTION_SAMPLES", 200)
    log(f"reaction: {samples} Deployment image changes")
    ds = reaction_ds(samples)
    log("reaction: image present in containerd")
    pull = reaction_pull() if PULL_IMAGES else []
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
        " kwarm's path needs two of those (the Deployment, then the DaemonSet) plus its 50 ms"
        " coalescing window.",
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
    data = {"ds": ds, "pull": pull}
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
        ]
    write_section("reaction", "\n".join(md), data)


# ---------------------------------------------------------------- section: footprint

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


def perf_available():
    return subprocess.run(["perf", "--version"], capture_output=True).returncode == 0


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
            rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "--percent-limit", "1.5",
                                  "--sort", "symbol", "-g", "none"], capture_output=True, text=True)
            prof["perf_top"] = [line for line in rep.stdout.splitlines() if line.strip() and not line.startswith("#")][:30]
            rep = subprocess.run(["perf", "report", "-i", data, "--children", "--stdio", "--percent-limit", "2",
                                  "--sort", "symbol", "-g", "none"], capture_output=True, text=True)
            prof["perf_children"] = [line for line in rep.stdout.splitlines() if line.strip() and not line.startswith("#")][:400]
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


def main():
    # SIGTERM (make interrupted, a stopped session) ends the section through its finally blocks,
    # which remove what it created in the cluster
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    fn = {"holder": section_holder, "image": section_image, "warmup": section_warmup,
          "reaction": section_reaction, "footprint": section_footprint}.get(sys.argv[1])
    if not fn:
        sys.exit(f"unknown section {sys.argv[1]!r}\n{__doc__}")
    fn()


if __name__ == "__main__":
    main()
