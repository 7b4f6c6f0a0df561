"""Shared by the benchmark sections: settings from the environment, statistics and Markdown,
processes (kwarm, the counting proxy), and cluster helpers. The sections import all of it."""
import glob
import json
import os
import re
import select  # noqa: F401 (used by the sections)
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
from kube import ApiError, Kube  # noqa: E402,F401 (ApiError: used by the sections)

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
# kubernetes-image-puller's own sleep, as its Makefile builds it (empty: PULLER_SLEEP_MISSING says why)
PULLER_SLEEP = os.environ.get("PULLER_SLEEP_BIN", "")
PULLER_SLEEP_MISSING = os.environ.get("PULLER_SLEEP_MISSING", "")
REG = "127.0.0.1:5000"
KIP_IMAGE = os.environ.get("KIP_IMAGE", f"{REG}/kwarm/sleep:dev")
PULLER_SLEEP_IMAGE = os.environ.get("PULLER_SLEEP_IMAGE", "")
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
    return f"{r:,.0f}×" if r >= 10 else f"{r:,.1f}×" if r >= 0.1 else f"{r:.2g}×"


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
            elif k == "Threads":
                out[k] = int(v)
    return out


class PeerProcess:
    """A manager (kwarm's or a peer's) as a child process, its output in a log file."""

    def __init__(self, name, cmd, env, metrics_port=None):
        self.name = name
        self.metrics_port = metrics_port  # where it serves Prometheus text, if it does
        os.makedirs(WORK, exist_ok=True)
        self.log_path = os.path.join(WORK, f"{name}.log")
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
        full.update(env)
        self.logf = open(self.log_path, "w")
        self.t_start = time.monotonic()
        self.p = subprocess.Popen(cmd, env=full, stdout=self.logf, stderr=subprocess.STDOUT,
                                  preexec_fn=_die_with_parent)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def stop(self, kill=False):
        """SIGTERM (SIGKILL with kill=True: no clean-up of its own), then wait."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()

    def tail(self, n=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def metrics(self):
        """Its Prometheus metrics, {series: value} ({} when it cannot be read)."""
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


class Kwarm(PeerProcess):
    """The manager as a child process with its own metrics/health ports and log file."""

    def __init__(self, name, env, binary=None, kubeconfig=KUBECONFIG, wrap=None):
        metrics_port = free_port()
        self.health_port = free_port()
        full = {
            "KUBECONFIG": kubeconfig,
            "KIP_IMAGE": KIP_IMAGE,
            "LEADER_ELECT": "false",
            "METRICS_BIND_ADDRESS": f"127.0.0.1:{metrics_port}",
            "HEALTH_PROBE_BIND_ADDRESS": f"127.0.0.1:{self.health_port}",
            "RUST_LOG": "info",
        }
        full.update(env)
        super().__init__(f"kwarm-{name}", (wrap or []) + [binary or KWARM], full, metrics_port)
        self.name = name
        if wrap:  # the manager is a child of the wrapper (perf): find it
            for _ in range(100):
                kids = subprocess.run(["pgrep", "-P", str(self.p.pid)], capture_output=True, text=True).stdout.split()
                if kids:
                    self.pid = int(kids[0])
                    break
                time.sleep(0.05)


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
        wait_port(self.port, "kubectl proxy")

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


def wait_port(port, what, seconds=10):
    """Waits until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start on port {port} within {seconds} s")


# ---------------------------------------------------------------- the peers (hack/peers.sh)

# the peers' source archives, and where hack/peers.sh builds them (hack/bench.sh exports both)
PEERS_DIR = os.environ.get("KWARM_PEERS_DIR", "")
PEERS_CACHE = os.environ.get("KWARM_PEERS_CACHE", os.path.expanduser("~/.cache/kwarm/peers"))
PULLER_IMAGE = f"{REG}/eclipse/kubernetes-image-puller:next"
FLEDGED_BUSYBOX_IMAGE = f"{REG}/senthilrch/busybox:1.35.0"


class Peer:
    """A peer as hack/peers.sh built it from its source archive (cache folder NAME-COMMIT): its
    binary and extracted source, or `reason`, the exact reason it cannot run (no archive, or the
    end of its failed build's log)."""

    def __init__(self, name, archive_prefix, binary):
        self.name = name
        self.binary = self.src = self.commit = self.reason = None
        archives = sorted(glob.glob(os.path.join(PEERS_DIR, f"{archive_prefix}-*.tar.gz"))) if PEERS_DIR else []
        if not archives:
            self.reason = (f"no {archive_prefix}-*.tar.gz among the peers' source archives"
                           f" (KWARM_PEERS_DIR={PEERS_DIR or 'unset'})")
            return
        self.commit = os.path.basename(archives[0])[:-len(".tar.gz")].rsplit("-", 1)[1]
        folder = os.path.join(PEERS_CACHE, f"{name}-{self.commit}")
        path = os.path.join(folder, "bin", binary)
        if os.access(path, os.X_OK):
            self.binary, self.src = path, os.path.join(folder, "src")
            return
        build_log = os.path.join(folder, "build.log")
        if os.path.exists(build_log):
            with open(build_log, errors="replace") as f:
                tail = [line.strip() for line in f if line.strip()][-3:]
            self.reason = f"its build failed (`hack/peers.sh build`, {build_log}): " + " / ".join(tail)
        else:
            self.reason = f"not built: no {path} (`hack/peers.sh build`)"


SEED_NS = "kwarm-system"  # the seed creates its Jobs there, whatever the PrePullImage's namespace
FLEDGED_NS = "kube-fledged"
SEED_API = "/apis/kwarm.io/v1alpha1"
FLEDGED_API = "/apis/kubefledged.io/v1alpha2"
BENCH_SELECTOR = {NODE_LABEL[0]: NODE_LABEL[1]}


def peers():
    return {
        "puller": Peer("kubernetes-image-puller", "che-kubernetes-image-puller", "kubernetes-image-puller"),
        "seed": Peer("kwarm-seed", "kwarm-seed", "manager"),
        "fledged": Peer("kube-fledged", "kube-fledged", "kubefledged-controller"),
    }


def kubectl(*args):
    r = subprocess.run([KUBECTL, "--kubeconfig", KUBECONFIG, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")


def apply_crd(path):
    import yaml
    with open(path) as f:
        name = yaml.safe_load(f)["metadata"]["name"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # an earlier run's, still terminating
        crd = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}", allow=(404,))
        if not crd or not crd["metadata"].get("deletionTimestamp"):
            break
        time.sleep(1)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", path)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", path)


def delete_crd(path):
    kubectl("delete", "--ignore-not-found", "--wait=false", "-f", path)


def seed_crds(peer):
    return sorted(glob.glob(os.path.join(peer.src, "config", "crd", "bases", "*.yaml")))


def fledged_crd(peer):
    return os.path.join(peer.src, "deploy", "kubefledged-crd.yaml")


def drop_finalizers(collection):
    """After the peer stopped: its finalizers would keep its objects (and their namespace) forever."""
    for obj in (kube.get(collection, allow=(404,)) or {}).get("items", []):
        if obj["metadata"].get("finalizers"):
            kube.merge_patch(f"{collection}/{obj['metadata']['name']}", {"metadata": {"finalizers": None}})


def seed_process(name, peer, kubeconfig):
    """The seed's manager out of cluster (its metrics on a port of its own, no leader election)."""
    port = free_port()
    return PeerProcess(name, [
        peer.binary, f"--kubeconfig={kubeconfig}", f"--metrics-bind-address=127.0.0.1:{port}",
        "--metrics-secure=false", f"--health-probe-bind-address=127.0.0.1:{free_port()}"], {}, port)


def seed_policy(name, ns, node_labels):
    """A PrePullPolicy selecting the labelled Deployments of ns, pulling on nodes with node_labels."""
    kube.post(f"{SEED_API}/prepullpolicies", {
        "apiVersion": "kwarm.io/v1alpha1", "kind": "PrePullPolicy", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": dict([ENABLED]), "namespaces": [ns]},
                 "nodeSelector": {"matchLabels": node_labels}}}, allow=(409,))


def seed_namespace_existed():
    """Whether the seed's Job namespace is someone else's (then only its Jobs are removed)."""
    return kube.get(f"/api/v1/namespaces/{SEED_NS}", allow=(404,)) is not None


def seed_cleanup(ns, had_system):
    """After the seed stopped: its PrePullImages in ns (their finalizers would keep them), ns, and
    its Jobs (or their whole namespace, when the bench created it)."""
    drop_finalizers(f"{SEED_API}/namespaces/{ns}/prepullimages")
    delete_ns(ns, wait=600)
    if had_system:
        kube.req("DELETE", f"/apis/batch/v1/namespaces/{SEED_NS}/jobs?labelSelector=kwarm.io%2Fprepullimage"
                 "&propagationPolicy=Background")
    else:
        delete_ns(SEED_NS, wait=900)


def puller_deployment(ns):
    """The Deployment kubernetes-image-puller insists on (DEPLOYMENT_NAME; it exits without it),
    with 0 replicas: the puller runs out of cluster."""
    kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments",
              {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kubernetes-image-puller"},
               "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "p"}},
                        "template": {"metadata": {"labels": {"app": "p"}},
                                     "spec": {"containers": [{"name": "p", "image": PULLER_IMAGE}]}}}},
              allow=(409,))


def puller_env(ns, daemonset, images, kubeconfig, node_selector=None):
    """kubernetes-image-puller's environment: `images` as {name: ref}, the chart's resources."""
    env = {"KUBECONFIG": kubeconfig, "IMAGES": ";".join(f"{k}={v}" for k, v in images.items()),
           "CACHING_INTERVAL_HOURS": "1", "NAMESPACE": ns, "DAEMONSET_NAME": daemonset,
           "DEPLOYMENT_NAME": "kubernetes-image-puller", "KIP_IMAGE": PULLER_IMAGE,
           "CACHING_MEMORY_REQUEST": "10Mi", "CACHING_MEMORY_LIMIT": "20Mi",
           "CACHING_CPU_REQUEST": ".05", "CACHING_CPU_LIMIT": ".2"}
    if node_selector:
        env["NODE_SELECTOR"] = json.dumps(node_selector)
    return env


def registry_has(ref):
    return subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
                          capture_output=True).returncode == 0


class CreatedCounter:
    """Counts the objects created from now on at some collection paths ({kind: path}), by watching
    them: a peer's Jobs and pods may be gone by the end (Job TTL, the peer's own clean-up). Also
    when each pod was first seen Succeeded (a Job's pod)."""

    def __init__(self, paths):
        self.created = {kind: set() for kind in paths}
        self.first = {}  # kind -> monotonic time of its first creation
        self.succeeded = {}  # pod uid -> monotonic time it was first seen Succeeded
        self.stopped = False
        for kind, path in paths.items():
            rv = kube.get(f"{path}?limit=1")["metadata"]["resourceVersion"]
            threading.Thread(target=self._watch, args=(kind, path, rv), daemon=True).start()

    def _watch(self, kind, path, rv):
        while not self.stopped:
            try:
                for typ, obj, _ in kube.watch(path, resource_version=rv, timeout_seconds=60):
                    if typ == "ERROR":  # resourceVersion too old: go on from now (rare at these sizes)
                        rv = kube.get(f"{path}?limit=1")["metadata"]["resourceVersion"]
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if typ == "ADDED":
                        self.created[kind].add(obj["metadata"]["uid"])
                        self.first.setdefault(kind, time.monotonic())
                    if kind == "pods" and (obj.get("status") or {}).get("phase") == "Succeeded":
                        self.succeeded.setdefault(obj["metadata"]["uid"], time.monotonic())
                    if self.stopped:
                        return
            except Exception:  # noqa: BLE001 (a dropped watch: watch again from rv)
                time.sleep(1)

    def counts(self):
        return {kind: len(uids) for kind, uids in self.created.items()}

    def stop(self):
        self.stopped = True

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


def kwok_node(name, label=NODE_LABEL):
    """A KWOK node object named `name`, carrying `label` (key, value) to find it by."""
    labels = {
        "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux", "kubernetes.io/hostname": name,
        "kubernetes.io/role": "agent", "type": "kwok", label[0]: label[1],
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
    wanted = set(want)
    while True:
        ready = sum(1 for n in bench_nodes() if n["metadata"]["name"] in wanted and any(
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

def perf_available():
    return subprocess.run(["perf", "--version"], capture_output=True).returncode == 0

def perf_reports(data):
    out = {}
    rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "--percent-limit", "1.5",
                          "--sort", "symbol", "-g", "none"], capture_output=True, text=True)
    out["perf_top"] = [line for line in rep.stdout.splitlines() if line.strip() and not line.startswith("#")][:30]
    rep = subprocess.run(["perf", "report", "-i", data, "--children", "--stdio", "--percent-limit", "2",
                          "--sort", "symbol", "-g", "none"], capture_output=True, text=True)
    out["perf_children"] = [line for line in rep.stdout.splitlines() if line.strip() and not line.startswith("#")][:400]
    return out
