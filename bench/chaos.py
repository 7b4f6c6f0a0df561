#!/usr/bin/env python3
"""kwarm's chaos suite, run by hack/chaos.sh (`make chaos`), on the running local cluster.

kwarm is installed in the cluster with its Helm chart, two replicas with leader election, holding
a few images on the real node and CHAOS_NODES KWOK nodes. Every replica reaches the API server
through a proxy of its own (bench/chaos_proxy.py), which counts its requests exactly and can cut
it off. Then faults are injected one after the other; for each:

  - a sampler lists the holder pods every 200 ms: for every (node, image), whether a Ready
    container of a running holder pod (not terminating) runs that image there; while the API server
    cannot be read, the real node's containerd is asked instead (KWOK nodes have no containers);
  - both replicas' /metrics are read every 200 ms (kwarm_leader);
  - recovery is the first moment, after the fault began, when every wanted image is held on every
    node, the DaemonSet holds exactly the wanted images and is rolled out, and exactly one replica
    leads; it must come within the fault's limit (a generous bound, not a target);
  - writes are the replicas' POST/PUT/PATCH/DELETE requests through the proxies, from the fault's
    start until 5 s after recovery (lease renewals counted apart), then a 10 s quiet window;
  - an assertion per fault: no holder lost where that is possible, recovery within its limit,
    and what the fault specifically must not break.

    python3 bench/chaos.py [FAULT...]      (default: all, in the order of FAULTS)

Writes bench/CHAOS.md and bench/chaos.json; exits 1 when an assertion failed. Everything it
creates is its own: namespace kwarm-chaos, fake nodes chaos-node-*.
CHAOS_SABOTAGE=1 runs one deliberately broken case instead (the managers scaled to zero before
another writer edits the DaemonSet) to show that the assertions fail.
"""
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos_proxy import ApiProxy, serving_certificate, summarize  # noqa: E402
from common import ROOT, ApiError, ctr, kube, kwok_node, table  # noqa: E402

CLUSTER_DIR = os.environ.get("KWARM_CLUSTER_DIR", "/var/lib/kwarm-cluster")
PKI = os.path.join(CLUSTER_DIR, "pki")
HELM = os.environ.get("HELM", "helm")
KUBECTL = os.environ["KUBECTL"]
WORK = os.path.join(ROOT, "_output", "chaos")
NS = "kwarm-chaos"
DS = "chaos-holders"
LEASE = f"{DS}-kwarm"
NODE_PREFIX = "chaos-node-"
N_KWOK = int(os.environ.get("CHAOS_NODES", "20"))
REAL_NODE = "127.0.0.1"
REG = "127.0.0.1:5000"
IMAGES = {"small": f"{REG}/test/small:v1", "other": f"{REG}/test/other:v1", "medium": f"{REG}/test/medium:v1"}
ROLLOUT_IMAGE = ("small2", f"{REG}/test/small:v2")
INTRUDER_IMAGE = f"{REG}/test/small:v3"
# replica name -> (metrics port, health port); both on the host network of the real node
REPLICAS = {"a": (18090, 18091), "b": (18092, 18093)}
SAMPLE_S = 0.2


def now():
    return time.monotonic()


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] chaos: {msg}", file=sys.stderr, flush=True)


def run(*cmd, check=True, timeout=300):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()[-800:]}")
    return r


def restart_component(name):
    t0 = now()
    run(os.path.join(ROOT, "hack", "cluster-restart.sh"), name, timeout=300)
    return round(now() - t0, 2)


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


# ---------------------------------------------------------------- observation

class Observer:
    """The sampler (holders) and the leader poller, each a thread; faults read windows of their
    timelines."""

    def __init__(self, nodes, wanted):
        self.nodes = list(nodes)
        self.wanted = dict(wanted)  # name -> image the DaemonSet should hold
        self.established = {}  # image -> when it was first seen held on every node
        self.lock = threading.Lock()
        self.samples = []  # (t, {image: nodes holding}, source)  source: api | containerd
        self.unknown = []  # t of samples where neither could be read
        self.leaders = []  # (t, {replica: 0/1/None})
        self.stop_flag = False
        self.selector = None
        for target in (self._sample_loop, self._leader_loop):
            threading.Thread(target=target, daemon=True).start()

    def set_wanted(self, wanted):
        with self.lock:
            self.wanted = dict(wanted)
            self.established = {i: t for i, t in self.established.items() if i in self.wanted.values()}

    def _holding(self):
        pods = kube.get(f"/api/v1/namespaces/{NS}/pods?labelSelector={self.selector}")["items"]
        held = {}
        for p in pods:
            if p["metadata"].get("deletionTimestamp") or p.get("status", {}).get("phase") != "Running":
                continue
            node = p["spec"].get("nodeName")
            images = {c["name"]: c["image"] for c in p["spec"]["containers"]}
            for cs in p.get("status", {}).get("containerStatuses") or []:
                if cs.get("ready") and "running" in (cs.get("state") or {}) and cs["name"] in images:
                    held.setdefault(images[cs["name"]], set()).add(node)
        return held

    def _real_node_holding(self):
        """The real node's holder containers with a running task, from containerd itself."""
        containers = {}
        for line in ctr("containers", "ls").splitlines()[1:]:
            f = line.split()
            if len(f) >= 2:
                containers[f[0]] = f[1]
        held = {}
        for line in ctr("tasks", "ls").splitlines()[1:]:
            f = line.split()
            if len(f) >= 3 and f[2] == "RUNNING" and f[0] in containers:
                held.setdefault(containers[f[0]], set()).add(REAL_NODE)
        return held

    def _sample_loop(self):
        while not self.stop_flag:
            t = now()
            try:
                held, source = self._holding(), "api"
            except Exception:  # noqa: BLE001 (the API server is down: ask containerd)
                try:
                    held, source = self._real_node_holding(), "containerd"
                except Exception:  # noqa: BLE001
                    held, source = None, None
            with self.lock:
                if held is None:
                    self.unknown.append(t)
                else:
                    wanted = set(self.wanted.values())
                    counts = {i: len(held.get(i, set()) & set(self.nodes)) for i in wanted}
                    if source == "api":
                        for i in wanted:
                            if counts[i] == len(self.nodes):
                                self.established.setdefault(i, t)
                    self.samples.append((t, counts, source))
            time.sleep(max(0.0, SAMPLE_S - (now() - t)))

    def _leader_loop(self):
        while not self.stop_flag:
            t = now()
            state = {}
            for r, (port, _) in REPLICAS.items():
                state[r] = metric(port, "kwarm_leader")
            with self.lock:
                self.leaders.append((t, state))
            time.sleep(max(0.0, SAMPLE_S - (now() - t)))

    def complete(self, since=None):
        """Whether the last API sample (after `since`) has every wanted image on every node."""
        with self.lock:
            wanted = set(self.wanted.values())
            for t, counts, source in reversed(self.samples):
                if since is not None and t < since:
                    return False
                if source == "api":
                    return all(counts.get(i, 0) == len(self.nodes) for i in wanted)
        return False

    def leader(self):
        """The one replica that leads now, or None (none, or more than one)."""
        with self.lock:
            if not self.leaders:
                return None
            state = self.leaders[-1][1]
        on = [r for r, v in state.items() if v == 1]
        return on[0] if len(on) == 1 else None

    def window(self, t0, t1):
        """What the timelines say between t0 and t1."""
        with self.lock:
            samples = [s for s in self.samples if t0 <= s[0] <= t1]
            unknown = [t for t in self.unknown if t0 <= t <= t1]
            leaders = [x for x in self.leaders if t0 <= x[0] <= t1]
            established = dict(self.established)
        n = len(self.nodes)
        min_holders, gap, prev = {}, 0.0, None
        real_only = {}
        for t, counts, source in samples:
            missing = False
            for image, c in counts.items():
                # an image counts from when it was first held everywhere (a new one rolls in)
                if image not in established or established[image] > t:
                    continue
                if source == "containerd":
                    # only the real node is visible: 1 means it holds the image
                    real_only[image] = min(real_only.get(image, 1), c)
                    missing |= c < 1
                    continue
                min_holders[image] = min(min_holders.get(image, n), c)
                missing |= c < n
            if prev is not None and missing:
                gap += t - prev
            prev = t
        both, none_s, prev = 0.0, 0.0, None
        for t, state in leaders:
            on = sum(1 for v in state.values() if v == 1)
            if prev is not None:
                if on > 1:
                    both += t - prev
                if on == 0:
                    none_s += t - prev
            prev = t
        return {"samples_api": sum(1 for s in samples if s[2] == "api"),
                "samples_containerd": sum(1 for s in samples if s[2] == "containerd"),
                "samples_unreadable": len(unknown),
                "min_holders": dict(sorted(min_holders.items())),
                "min_real_node_holders_while_api_down": dict(sorted(real_only.items())),
                "seconds_some_holder_missing": round(gap, 2),
                "seconds_two_leaders": round(both, 2), "seconds_no_leader": round(none_s, 2)}

    def stop(self):
        self.stop_flag = True


def metric(port, name):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=0.5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def metric_sum(port, name):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


# ---------------------------------------------------------------- the installation

def ensure_nodes():
    names = [f"{NODE_PREFIX}{i}" for i in range(N_KWOK)]
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda n: kube.post("/api/v1/nodes", kwok_node(n, ("kwarm-chaos", "nodes")), allow=(409,)), names))
    deadline = now() + 120
    while now() < deadline:
        nodes = kube.get("/api/v1/nodes?labelSelector=kwarm-chaos%3Dnodes")["items"]
        ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                         for c in n.get("status", {}).get("conditions", []))]
        if len(ready) >= N_KWOK:
            return names
        time.sleep(1)
    raise RuntimeError(f"only {len(ready)} of {N_KWOK} fake nodes Ready")


def delete_nodes():
    names = [n["metadata"]["name"] for n in kube.get("/api/v1/nodes?labelSelector=kwarm-chaos%3Dnodes")["items"]]
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda n: kube.delete(f"/api/v1/nodes/{n}"), names))


def images_value(wanted):
    return ";".join(f"{k}={v}" for k, v in wanted.items())


def install(proxies):
    values = {
        "replicaCount": 1,
        "podLabels": {"chaos-replica": "a"},
        # MAX_CONCURRENT_NODES 2 (maxSurge): a roll over the nodes takes seconds, a kill can land in it
        "configMap": {"images": images_value(IMAGES), "daemonsetName": DS, "nodeSelector": "{}",
                      "maxConcurrentNodes": "2",
                      "watchDeployments": False, "rustLog": "info"},
        "extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                     {"name": "KUBERNETES_SERVICE_PORT", "value": str(proxies["a"].port)}],
        "metrics": {"port": REPLICAS["a"][0]}, "health": {"port": REPLICAS["a"][1]},
    }
    path = os.path.join(WORK, "values.yaml")
    with open(path, "w") as f:
        json.dump(values, f)  # JSON is YAML
    run(HELM, "upgrade", "--install", "kwarm", os.path.join(ROOT, "deploy", "helm"), "--namespace", NS,
        "--create-namespace", "-f", os.path.join(ROOT, "deploy", "helm", "ci", "local-cluster-values.yaml"),
        "-f", path, "--wait", "--timeout", "180s")
    # The second replica: the chart's Deployment with other ports, as its own Deployment. Two pods
    # of one Deployment cannot share the single real node on the host network (same host ports);
    # apart from the ports and its API server address (its own proxy) it is the same manager:
    # the same ConfigMap, service account, lease and DaemonSet.
    d = kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/kwarm")
    meta = {"name": "kwarm-b", "namespace": NS, "labels": d["metadata"].get("labels", {})}
    spec = d["spec"]
    spec["selector"]["matchLabels"]["chaos-replica"] = "b"
    spec["template"]["metadata"]["labels"]["chaos-replica"] = "b"
    c = spec["template"]["spec"]["containers"][0]
    ports = {"metrics": REPLICAS["b"][0], "health": REPLICAS["b"][1]}
    for p in c.get("ports", []):
        p["containerPort"] = ports[p["name"]]
        p.pop("hostPort", None)
    for e in c["env"]:
        if e["name"] == "METRICS_BIND_ADDRESS":
            e["value"] = f":{REPLICAS['b'][0]}"
        elif e["name"] == "HEALTH_PROBE_BIND_ADDRESS":
            e["value"] = f":{REPLICAS['b'][1]}"
        elif e["name"] == "KUBERNETES_SERVICE_PORT":
            e["value"] = str(proxies["b"].port)
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}
    kube.apply(f"/apis/apps/v1/namespaces/{NS}/deployments/kwarm-b", body, manager="kwarm-chaos")
    wait(lambda: deployment_ready("kwarm") and deployment_ready("kwarm-b"), 180, "both manager replicas Ready")


def deployment_ready(name):
    d = kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{name}", allow=(404,))
    st = (d or {}).get("status", {})
    return bool(d) and st.get("observedGeneration") == d["metadata"]["generation"] \
        and st.get("readyReplicas") == 1 and st.get("updatedReplicas") == 1 and st.get("replicas") == 1


def wait(cond, seconds, what, step=0.1):
    deadline = now() + seconds
    while now() < deadline:
        try:
            if cond():
                return now()
        except (ApiError, OSError):
            pass
        time.sleep(step)
    raise RuntimeError(f"timed out after {seconds} s waiting for {what}")


def daemonset():
    return kube.get(f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}", allow=(404,))


def ds_images(ds):
    return sorted(c["image"] for c in ds["spec"]["template"]["spec"]["containers"])


def ds_converged(wanted):
    ds = daemonset()
    if not ds:
        return False
    st = ds.get("status", {})
    return ds_images(ds) == sorted(wanted.values()) \
        and st.get("observedGeneration") == ds["metadata"]["generation"] \
        and st.get("desiredNumberScheduled", -1) == st.get("updatedNumberScheduled") == st.get("numberReady") \
        and st.get("numberReady", 0) >= N_KWOK + 1


def manager_pods():
    """replica -> its one running, non-terminating pod (or None)."""
    out = {r: None for r in REPLICAS}
    for p in kube.get(f"/api/v1/namespaces/{NS}/pods?labelSelector=chaos-replica")["items"]:
        r = p["metadata"]["labels"].get("chaos-replica")
        if r in out and not p["metadata"].get("deletionTimestamp"):
            out[r] = p
    return out


def restart_counts():
    return {r: sum(cs.get("restartCount", 0) for cs in (p or {}).get("status", {}).get("containerStatuses") or [])
            for r, p in manager_pods().items()}


def lease():
    return kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{LEASE}", allow=(404,))


def container_pid(pod):
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    for line in ctr("tasks", "ls").splitlines()[1:]:
        f = line.split()
        if f and f[0] == cid:
            return int(f[1])
    raise RuntimeError(f"no task for container {cid}")


def configmap_images(wanted):
    kube.merge_patch(f"/api/v1/namespaces/{NS}/configmaps/kwarm", {"data": {"IMAGES": images_value(wanted)}})


def merge_patch_as(path, body, manager):
    sep = "&" if "?" in path else "?"
    return kube.req("PATCH", f"{path}{sep}fieldManager={manager}", body, ctype="application/merge-patch+json")


# ---------------------------------------------------------------- etcd (its HTTP gateway)

def etcd(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:2379{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def etcd_compact():
    """Compacts etcd at its current revision -> the revision."""
    rev = int(etcd("/v3/kv/range", {"key": base64.b64encode(b"/registry/health").decode()})["header"]["revision"])
    etcd("/v3/kv/compaction", {"revision": str(rev), "physical": True})
    return rev


# ---------------------------------------------------------------- the suite

class Suite:
    def __init__(self):
        self.results = []
        self.failed = []

    def setup(self):
        os.makedirs(WORK, exist_ok=True)
        self.load_start = loadavg()
        cert, key = serving_certificate(PKI, WORK)
        self.proxies = {r: ApiProxy(r, 6443, os.path.join(PKI, "ca.crt"), cert, key) for r in REPLICAS}
        self.nodes = [REAL_NODE] + ensure_nodes()
        log(f"{len(self.nodes)} nodes; proxies on ports {[p.port for p in self.proxies.values()]}")
        install(self.proxies)
        self.wanted = dict(IMAGES)
        ds = None

        def have_ds():
            nonlocal ds
            ds = daemonset()
            return ds is not None
        wait(have_ds, 60, "the DaemonSet")
        sel = ",".join(f"{k}%3D{v}" for k, v in ds["spec"]["selector"]["matchLabels"].items())
        self.obs = Observer(self.nodes, self.wanted)
        self.obs.selector = sel
        wait(lambda: ds_converged(self.wanted) and self.obs.complete() and self.obs.leader(), 300,
             "every image held on every node, one leader")
        log("installed: every image held on every node")

    def healthy(self, since=None):
        return self.obs.complete(since) and ds_converged(self.wanted) and self.obs.leader() is not None

    def fault(self, name, title, inject, limit, no_loss=True, loss_why="", checks=None):
        """Runs one fault: waits for a healthy start, injects, waits for recovery, measures."""
        log(f"fault {name}: {title}")
        wait(self.healthy, 180, f"a healthy start for {name}")
        time.sleep(2)
        marks = {r: p.mark() for r, p in self.proxies.items()}
        gone0 = {r: p.gone for r, p in self.proxies.items()}
        restarts0 = restart_counts()
        ds0 = daemonset()
        load = loadavg()
        t0 = now()
        info = inject() or {}
        t_end = now()
        recovered = None
        deadline = t0 + limit
        while now() < deadline:
            try:
                if self.healthy(since=t_end):
                    recovered = now()
                    break
            except (ApiError, OSError):
                pass
            time.sleep(0.1)
        t_meas = (recovered or now()) + 5
        while now() < t_meas:
            time.sleep(0.1)
        win = self.obs.window(t0, t_meas)
        writes = {r: summarize(p.since(marks[r])) for r, p in self.proxies.items()}
        quiet_marks = {r: p.mark() for r, p in self.proxies.items()}
        time.sleep(10)
        quiet = {r: summarize(p.since(quiet_marks[r])) for r, p in self.proxies.items()}
        ds1 = daemonset()
        row = {
            "fault": name, "title": title, "load_average": load,
            "fault_seconds": round(t_end - t0, 2),
            "recovered": recovered is not None,
            "recovery_seconds_from_fault_start": round(recovered - t0, 2) if recovered else None,
            "recovery_seconds_from_fault_end": round(recovered - t_end, 2) if recovered else None,
            "limit_seconds": limit,
            **win,
            "nodes": len(self.nodes),
            "writes": sum(w["writes"] - w["lease_writes"] for w in writes.values()),
            "lease_writes": sum(w["lease_writes"] for w in writes.values()),
            "requests": sum(w["all"] for w in writes.values()),
            "requests_by_replica": writes,
            "quiet_window_writes": sum(q["writes"] - q["lease_writes"] for q in quiet.values()),
            "quiet_window_by": {r: q["by"] for r, q in quiet.items()},
            "gone_410_seen": sum(p.gone - gone0[r] for r, p in self.proxies.items()),
            # container restarts within the same pod (a replaced pod starts from 0)
            "manager_restarts": {r: max(0, n - restarts0.get(r, 0)) for r, n in restart_counts().items()},
            "ds_generation": [ds0["metadata"]["generation"] if ds0 else None,
                              ds1["metadata"]["generation"] if ds1 else None],
            "leader_after": self.obs.leader(),
            "info": info,
        }
        # assertions
        problems = []
        if recovered is None:
            problems.append(f"not recovered within {limit} s")
        if no_loss:
            for image, c in win["min_holders"].items():
                if c < len(self.nodes):
                    problems.append(f"{image} held on only {c} of {len(self.nodes)} nodes at some point")
            for image, c in win["min_real_node_holders_while_api_down"].items():
                if c < 1:
                    problems.append(f"{image} not running on the real node while the API server was down")
        if row["quiet_window_writes"] > 2:
            problems.append(f"{row['quiet_window_writes']} writes in the 10 s quiet window after recovery")
        for check_name, check in (checks or {}).items():
            ok, detail = check(row)
            row.setdefault("checks", {})[check_name] = {"ok": ok, "detail": detail}
            if not ok:
                problems.append(f"{check_name}: {detail}")
        row["no_loss_expected"] = no_loss
        row["loss_why"] = loss_why
        row["problems"] = problems
        row["passed"] = not problems
        self.results.append(row)
        if problems:
            self.failed.append(name)
            self.repair()
        log(f"  {name}: {'PASS' if not problems else 'FAIL: ' + '; '.join(problems)}; "
            f"recovery {row['recovery_seconds_from_fault_start']} s, min holders {win['min_holders']}, "
            f"writes {row['writes']} (+{row['lease_writes']} lease), 410 {row['gone_410_seen']}")
        return row

    def repair(self):
        """After a failed fault, so that the next one starts healthy: the state annotation removed
        and both managers restarted (they adopt what the DaemonSet says)."""
        log("  repairing: kwarm.io/state removed, both manager pods restarted")
        try:
            self._state(None)
            self.f_both_replicas_restart()
        except Exception as e:  # noqa: BLE001 (the next fault's healthy start says what is left)
            log(f"  repair failed: {e}")

    # ------------------------------------------------------------ faults

    def leader_replica(self):
        wait(lambda: self.obs.leader() is not None, 60, "a leader")
        return self.obs.leader()

    def f_apiserver_restart(self):
        return {"restart_seconds": restart_component("kube-apiserver")}

    def f_etcd_restart(self):
        return {"restart_seconds": restart_component("etcd")}

    def f_watch_410(self):
        # Both replicas' connections stall (their watches stop at the resource version they had),
        # the cluster moves on, etcd is compacted past their resource versions, and the API server
        # restarts (its watch cache forgets the history it could have served them from). When the
        # proxies close the stalled connections, every watch resumes from a version that is gone.
        for p in self.proxies.values():
            p.cut()
        try:
            for i in range(20):
                kube.post(f"/api/v1/namespaces/{NS}/configmaps",
                          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"chaos-churn-{i}"}},
                          allow=(409,))
                kube.delete(f"/api/v1/namespaces/{NS}/configmaps/chaos-churn-{i}")
            rev = etcd_compact()
            secs = restart_component("kube-apiserver")
        finally:
            for p in self.proxies.values():
                p.heal(reset=True)
        return {"compacted_at_revision": rev, "apiserver_restart_seconds": secs}

    def f_leader_kill_mid_rollout(self):
        leader = self.leader_replica()
        pod = manager_pods()[leader]
        pid = container_pid(pod)
        gen0 = daemonset()["metadata"]["generation"]
        wanted = dict(self.wanted)
        wanted[ROLLOUT_IMAGE[0]] = ROLLOUT_IMAGE[1]
        self.wanted = wanted
        self.obs.set_wanted(wanted)
        configmap_images(wanted)
        ds = None

        def applied():
            nonlocal ds
            ds = daemonset()
            return ds["metadata"]["generation"] > gen0
        wait(applied, 30, "the leader to apply the new image", step=0.02)
        t_applied = now()
        gen = ds["metadata"]["generation"]

        def rolling():
            st = daemonset().get("status", {})
            return st.get("observedGeneration") == gen and 0 < st.get("updatedNumberScheduled", 0) \
                < st.get("desiredNumberScheduled", 0)
        try:  # with maxSurge 2 the roll over 21 nodes takes seconds: kill in its middle
            wait(rolling, 10, "the roll to be under way", step=0.02)
        except RuntimeError:
            pass
        os.kill(pid, signal.SIGKILL)
        t_killed = now()
        # the DaemonSet controller's view at the kill: still rolling when it had not yet observed
        # the new generation or not every pod was updated
        st = (daemonset() or {}).get("status", {})
        return {"killed": leader, "pod": pod["metadata"]["name"], "pid": pid,
                "killed_after_apply_seen_s": round(t_killed - t_applied, 3),
                "max_concurrent_nodes": 2,
                "generation": ds["metadata"]["generation"],
                "right_after_kill": {k: st.get(k) for k in ("observedGeneration", "updatedNumberScheduled",
                                                            "desiredNumberScheduled", "numberReady")}}

    def f_controller_manager_mid_rollout(self):
        # IMAGES loses the image the leader-kill fault added (or gains it, run alone): a roll over
        # the nodes (maxSurge 2) that the DaemonSet controller, restarted in its middle, has to finish
        gen0 = daemonset()["metadata"]["generation"]
        wanted = {k: v for k, v in self.wanted.items() if k != ROLLOUT_IMAGE[0]}
        if wanted == self.wanted:
            wanted[ROLLOUT_IMAGE[0]] = ROLLOUT_IMAGE[1]
        self.wanted = wanted
        self.obs.set_wanted(wanted)
        configmap_images(wanted)
        wait(lambda: daemonset()["metadata"]["generation"] > gen0, 30, "the leader to apply", step=0.02)
        st = daemonset().get("status", {})
        return {"status_at_restart": {k: st.get(k) for k in ("observedGeneration", "updatedNumberScheduled")},
                "restart_seconds": restart_component("kube-controller-manager")}

    def f_both_replicas_restart(self):
        pods = manager_pods()
        names = [p["metadata"]["name"] for p in pods.values() if p]
        with ThreadPoolExecutor(2) as ex:
            list(ex.map(lambda n: kube.delete(f"/api/v1/namespaces/{NS}/pods/{n}"), names))
        wait(lambda: all(p and p["metadata"]["name"] not in names for p in manager_pods().values())
             and deployment_ready("kwarm") and deployment_ready("kwarm-b"), 120, "two new manager pods")
        return {"deleted": names}

    def f_partition_leader(self):
        leader = self.leader_replica()
        other = next(r for r in REPLICAS if r != leader)
        proxy = self.proxies[leader]
        t0 = now()
        proxy.cut()
        took_over = stepped_down = None
        while now() - t0 < 30:
            with self.obs.lock:
                state = self.obs.leaders[-1][1] if self.obs.leaders else {}
            if took_over is None and state.get(other) == 1:
                took_over = round(now() - t0, 2)
            if stepped_down is None and state.get(leader) == 0:
                stepped_down = round(now() - t0, 2)
            time.sleep(0.1)
        proxy.heal()
        return {"partitioned": leader, "partition_seconds": round(now() - t0, 2),
                "other_took_over_after_s": took_over, "partitioned_stepped_down_after_s": stepped_down}

    def f_kubelet_restart(self):
        return {"restart_seconds": restart_component("kubelet")}

    def f_containerd_restart(self):
        return {"restart_seconds": restart_component("containerd")}

    def f_foreign_annotation(self):
        body = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {
            "name": DS, "annotations": {"example.com/owner": "another-team"}, "labels": {"example.com/tier": "x"}}}
        kube.apply(f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}", body, manager="chaos-intruder")
        return {}

    def f_foreign_image_edit(self):
        ds = daemonset()
        containers = ds["spec"]["template"]["spec"]["containers"]
        victim = next(c for c in containers if c["image"] == IMAGES["small"])
        patch = {"spec": {"template": {"spec": {"containers": [
            {"name": c["name"], "image": INTRUDER_IMAGE if c is victim else c["image"]} for c in containers]}}}}
        # a strategic merge patch keyed by container name, as `kubectl edit` sends
        path = f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}?fieldManager=chaos-intruder"
        kube.req("PATCH", path, patch, ctype="application/strategic-merge-patch+json")
        t0 = now()
        wait(lambda: IMAGES["small"] in ds_images(daemonset()) and INTRUDER_IMAGE not in ds_images(daemonset()),
             60, "kwarm to restore the edited image", step=0.02)
        return {"container": victim["name"], "restored_after_s": round(now() - t0, 3)}

    def f_holder_pods_deleted(self):
        pods = kube.get(f"/api/v1/namespaces/{NS}/pods?labelSelector={self.obs.selector}")["items"]
        victims = [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") in
                   {REAL_NODE, f"{NODE_PREFIX}0", f"{NODE_PREFIX}1", f"{NODE_PREFIX}2", f"{NODE_PREFIX}3"}]
        with ThreadPoolExecutor(5) as ex:
            list(ex.map(lambda n: kube.req("DELETE", f"/api/v1/namespaces/{NS}/pods/{n}?fieldManager=chaos-intruder",
                                           ok=(200, 202)), victims))
        return {"deleted": victims}

    def _state(self, value):
        merge_patch_as(f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}",
                       {"metadata": {"annotations": {"kwarm.io/state": value}}}, "chaos-intruder")

    def _state_while_leaderless(self, value):
        """SIGKILLs the leader and writes `value` into kwarm.io/state at once, before anyone can lead
        again: the follower adopts it while following and acts on it when it takes over (a leader
        would overwrite a hand edit with its own state at once). Waits for the new leader."""
        leader = self.leader_replica()
        pod = manager_pods()[leader]
        os.kill(container_pid(pod), signal.SIGKILL)
        self._state(value)
        t0 = now()
        time.sleep(1)  # the killed replica's /metrics is gone by now
        wait(lambda: self.obs.leader() is not None, 90, "a new leader")
        return {"killed": leader, "state_bytes": len(value.encode()), "new_leader": self.obs.leader(),
                "new_leader_after_s": round(now() - t0, 2)}

    def f_state_garbage(self):
        return self._state_while_leaderless("{garbage\x00\u202e" + "]" * 100)

    def f_state_oversized(self):
        # valid JSON far past kwarm's 64 KiB budget for the annotation (unknown fields are ignored)
        return self._state_while_leaderless(json.dumps({"retained": {}, "chaos": "x" * (180 * 1024)}))

    def f_state_future(self):
        far = "9999-12-31T23:59:59Z"
        state = {"retained": {IMAGES["small"]: far},
                 "quarantined": {IMAGES["other"]: {"attempt": 4294967295, "retryAt": far},
                                 IMAGES["medium"]: {"attempt": 1, "retryAt": None}}}
        return {"state": state, **self._state_while_leaderless(json.dumps(state))}

    def f_crafted_events(self):
        pod = kube.get(f"/api/v1/namespaces/{NS}/pods?labelSelector={self.obs.selector}")["items"][0]
        messages = [
            'Successfully pulled image "x" in 9999999999999999h0m0s (9999999999999999h including waiting). Image size: 99999999999999999999999 bytes.',
            'Successfully pulled image "x" in 1e308s (1e308s including waiting). Image size: -5 bytes.',
            'Successfully pulled image "x" in -3s (NaNs including waiting). Image size: 18446744073709551616 bytes.',
            'Successfully pulled image "x" in ' + "9" * 5000 + "ms",
            'Successfully pulled image "' + "x" * (900 * 1024) + '" in 1s',
            "\x00\ufffd" * 1000,
        ]
        for i, msg in enumerate(messages):
            ev = {"apiVersion": "v1", "kind": "Event",
                  "metadata": {"name": f"chaos-crafted-{i}-{time.time_ns()}", "namespace": NS},
                  "involvedObject": {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": NS,
                                     "uid": pod["metadata"]["uid"]},
                  "reason": "Pulled", "message": msg, "type": "Normal", "count": 2147483647,
                  "firstTimestamp": "1970-01-01T00:00:00Z", "lastTimestamp": "9999-12-31T23:59:59Z",
                  "source": {"component": "kubelet", "host": REAL_NODE}}
            kube.post(f"/api/v1/namespaces/{NS}/events", ev)
        time.sleep(3)
        return {"events": len(messages), "largest_message_bytes": max(len(m.encode()) for m in messages)}

    def f_lease_edit(self):
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{LEASE}"
        current = lease()
        before = current["spec"].get("holderIdentity")
        current["spec"]["holderIdentity"] = "chaos-impostor"
        current["spec"]["renewTime"] = "2100-01-01T00:00:00.000000Z"
        current["spec"]["acquireTime"] = "2100-01-01T00:00:00.000000Z"
        kube.req("PUT", lease_path + "?fieldManager=chaos-intruder", current)
        t0 = now()
        wait(lambda: lease()["spec"].get("holderIdentity") not in ("chaos-impostor", None), 120,
             "a replica to take the lease back", step=0.2)
        return {"holder_before": before, "taken_back_after_s": round(now() - t0, 2),
                "holder_after": lease()["spec"].get("holderIdentity")}

    def f_sabotage(self):
        """Deliberately broken: no manager runs while another writer edits the DaemonSet."""
        for d in ("kwarm", "kwarm-b"):
            kube.merge_patch(f"/apis/apps/v1/namespaces/{NS}/deployments/{d}", {"spec": {"replicas": 0}})
        wait(lambda: not any(manager_pods().values()), 60, "the managers to stop")
        ds = daemonset()
        containers = ds["spec"]["template"]["spec"]["containers"]
        patch = {"spec": {"template": {"spec": {"containers": [
            {"name": c["name"], "image": INTRUDER_IMAGE if c["image"] == IMAGES["small"] else c["image"]}
            for c in containers]}}}}
        kube.req("PATCH", f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}?fieldManager=chaos-intruder",
                 patch, ctype="application/strategic-merge-patch+json")
        return {}

    def restore_after_sabotage(self):
        for d in ("kwarm", "kwarm-b"):
            kube.merge_patch(f"/apis/apps/v1/namespaces/{NS}/deployments/{d}", {"spec": {"replicas": 1}})


# (name, title, method, limit s, no loss expected, why loss is expected, checks)
def unchanged_generation(row):
    a, b = row["ds_generation"]
    return a == b, f"DaemonSet generation {a} -> {b}"


def spec_writes(row):
    """Writes of the DaemonSet object itself (not its status) by the replicas."""
    return sum(n for rep in row["requests_by_replica"].values() for k, n in rep["by"].items()
               if k in ("PATCH daemonsets", "PUT daemonsets", "POST daemonsets", "DELETE daemonsets"))


def one_leader(row):
    return row["seconds_two_leaders"] == 0, f"{row['seconds_two_leaders']} s with two replicas reporting kwarm_leader 1"


def no_manager_crash(row):
    return not any(row["manager_restarts"].values()), f"manager container restarts {row['manager_restarts']}"


def saw_410(row):
    return row["gone_410_seen"] > 0, f"{row['gone_410_seen']} responses or watch events 410 Gone through the proxies"


def not_loaded(image):
    def check(row):
        held = row["min_holders"]
        return image not in held or held[image] == row["nodes"], f"min holders {held}"
    return check


FAULTS = [
    ("apiserver_restart", "kube-apiserver restarted", "f_apiserver_restart", 120, True, "",
     {"one leader at a time": one_leader, "DaemonSet not rolled": unchanged_generation}),
    ("etcd_restart", "etcd restarted (data kept)", "f_etcd_restart", 120, True, "",
     {"one leader at a time": one_leader, "DaemonSet not rolled": unchanged_generation}),
    ("watch_410", "every watch resumed from a compacted resource version (410 Gone)", "f_watch_410", 150, True, "",
     {"410 Gone seen": saw_410, "one leader at a time": one_leader, "DaemonSet not rolled": unchanged_generation}),
    ("leader_kill_mid_rollout", "leader SIGKILLed during an IMAGES rollout", "f_leader_kill_mid_rollout", 120, True, "",
     {"one leader at a time": one_leader}),
    ("controller_manager_mid_rollout", "kube-controller-manager restarted during a roll (an image removed from "
     "IMAGES)", "f_controller_manager_mid_rollout", 120, True, "", {"one leader at a time": one_leader}),
    ("both_replicas_restart", "both manager pods deleted at once", "f_both_replicas_restart", 120, True, "",
     {"DaemonSet not rolled": unchanged_generation}),
    ("partition_leader_30s", "leader cut from the API server for 30 s, then healed", "f_partition_leader", 120, True, "",
     {"one leader at a time": one_leader, "DaemonSet not rolled": unchanged_generation}),
    ("kubelet_restart", "the real node's kubelet restarted", "f_kubelet_restart", 120, True, "",
     {"DaemonSet not rolled": unchanged_generation}),
    ("containerd_restart", "the real node's containerd restarted", "f_containerd_restart", 180, True, "",
     {"DaemonSet not rolled": unchanged_generation}),
    ("foreign_annotation", "another field manager adds an annotation and a label (server-side apply)",
     "f_foreign_annotation", 60, True, "", {"DaemonSet not rolled": unchanged_generation}),
    ("foreign_image_edit", "another field manager changes a holder's image (strategic merge patch)",
     "f_foreign_image_edit", 120, False,
     "the DaemonSet controller rolls the edited template at once: on KWOK nodes the intruder's pods are "
     "Ready instantly and replace the holders of the edited image until kwarm's restore rolls back", {}),
    ("holder_pods_deleted", "another writer deletes the holder pods of 5 nodes (the real one included)",
     "f_holder_pods_deleted", 120, False, "the deleted pods were the holders; the DaemonSet controller recreates them",
     {"DaemonSet not re-applied": lambda r: (not spec_writes(r), f"{spec_writes(r)} writes of the DaemonSet itself")}),
    ("state_garbage", "kwarm.io/state set to garbage by another writer while the leader is down (SIGKILL)",
     "f_state_garbage", 120, True, "", {}),
    ("state_oversized", "kwarm.io/state set to 180 KiB of valid JSON (past its 64 KiB budget) while the leader is "
     "down (SIGKILL)",
     "f_state_oversized", 120, True, "", {}),
    ("state_future", "kwarm.io/state with future-dated and absurd entries (quarantine of held images) while the "
     "leader is down (SIGKILL)", "f_state_future", 120, True, "", {}),
    ("crafted_events", "crafted Pulled Events: absurd durations and sizes, a 900 KiB message",
     "f_crafted_events", 60, True, "",
     {"no manager crash": no_manager_crash, "DaemonSet not rolled": unchanged_generation}),
    ("lease_edit", "Lease edited by hand: another holder, renew time in 2100", "f_lease_edit", 120, True, "",
     {"one leader at a time": one_leader, "DaemonSet not rolled": unchanged_generation}),
]


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = sys.argv[1:]
    known = [f[0] for f in FAULTS]
    for c in chosen:
        if c not in known:
            sys.exit(f"unknown fault {c!r}; one of: {' '.join(known)}")
    sabotage = os.environ.get("CHAOS_SABOTAGE") == "1"
    suite = Suite()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = now()
    try:
        suite.setup()
        if sabotage:
            suite.repair = lambda: None  # nothing runs to repair: the managers are scaled to zero
            suite.fault("sabotage", "DELIBERATELY BROKEN: managers scaled to 0, then another writer edits "
                        "a holder's image", suite.f_sabotage, 60, True, "", {})
            suite.restore_after_sabotage()
        else:
            for name, title, method, limit, no_loss, why, checks in FAULTS:
                if chosen and name not in chosen:
                    continue
                try:
                    suite.fault(name, title, getattr(suite, method), limit, no_loss, why, checks)
                except Exception as e:  # noqa: BLE001 (a fault that could not run fails, the suite goes on)
                    log(f"  {name}: ERROR {e}")
                    suite.failed.append(name)
                    suite.results.append({"fault": name, "title": title, "error": str(e), "passed": False})
    finally:
        if hasattr(suite, "obs"):
            suite.obs.stop()
        for p in getattr(suite, "proxies", {}).values():
            p.stop()
        if os.environ.get("CHAOS_KEEP") != "1":
            run(HELM, "uninstall", "kwarm", "-n", NS, "--wait", "--timeout", "90s", check=False)
            run(KUBECTL, "delete", "namespace", NS, "--wait=true", "--timeout=120s", check=False)
            delete_nodes()
    meta = {"started": started, "seconds": round(now() - t0), "kwarm_build": os.environ.get("KWARM_BUILD", ""),
            "load_average_start": getattr(suite, "load_start", None), "load_average_end": loadavg(),
            "nodes": len(getattr(suite, "nodes", [])), "images": IMAGES, "sabotage": sabotage,
            "failed": suite.failed}
    out = os.path.join(ROOT, "bench", "chaos-sabotage.json" if sabotage else "chaos.json")
    if not chosen or sabotage:
        with open(out, "w") as f:
            json.dump({"meta": meta, "faults": suite.results}, f, indent=1, sort_keys=True, default=str)
            f.write("\n")
        full = os.path.join(ROOT, "bench", "chaos.json")
        if not sabotage or os.path.exists(full):
            # a sabotage run adds its result to the report of the last full run
            with open(full) as f:
                last = json.load(f)
            with open(os.path.join(ROOT, "bench", "CHAOS.md"), "w") as f:
                f.write(render(last["meta"], last["faults"]))
        log(f"wrote {os.path.relpath(out, ROOT)}")
    else:
        with open(os.path.join(WORK, "partial.json"), "w") as f:
            json.dump({"meta": meta, "faults": suite.results}, f, indent=1, sort_keys=True, default=str)
    log(f"chaos: {len(suite.results) - len(suite.failed)} passed, {len(suite.failed)} failed"
        + (f" ({' '.join(suite.failed)})" if suite.failed else ""))
    sys.exit(1 if suite.failed else 0)


NOTES = [
    "## How",
    "",
    "- **Two in-cluster replicas.** The chart's Deployment (`replicaCount: 1`) plus `kwarm-b`, a copy of it "
    "that differs only in its ports and its API server address: with one real node and the host network (the "
    "local cluster has no kube-proxy), two pods of one Deployment would need the same host ports. Same "
    "ConfigMap, service account, Lease and DaemonSet; both are real pods the kubelet restarts.",
    "- **The proxies.** Each replica's `KUBERNETES_SERVICE_PORT` points at a TLS-terminating proxy on "
    "127.0.0.1 (`bench/chaos_proxy.py`, a serving certificate signed by the cluster CA the pods already trust). "
    "It relays bytes unchanged and authenticates nothing itself (the pod's token goes through), reads the HTTP "
    "framing to record every request and its status, and counts 410s (status or `\"code\":410` watch events). "
    "A *cut* stops relaying both ways (held bytes are delivered at *heal*), like a partition with TCP "
    "retransmitting; `heal(reset)` closes every connection instead.",
    "- **410 Gone, honestly.** Both replicas are cut (their watches stop at the resource version they had), "
    "20 ConfigMaps are created and deleted, etcd is compacted at its current revision (its HTTP gateway, "
    "`/v3/kv/compaction`, physical), the API server is restarted (its watch cache forgets the history it "
    "could have served), and the proxies close the stalled connections: every watch resumes from a compacted "
    "version. The proxies count the 410s the replicas received; a plain API server restart already gives some.",
    "- **Component restarts** use `hack/cluster-restart.sh COMPONENT` (cluster-up's own start functions). "
    "containerd is stopped with SIGTERM: its shims and so the containers keep running, as with a systemd "
    "restart, and the holders on the real node never stopped: \"no node without a holder\" stays possible "
    "for every fault here except the two where another writer removes or replaces the holders itself "
    "(`foreign_image_edit`, `holder_pods_deleted`: loss expected, recovery measured).",
    "- **Leader kill.** SIGKILL of the leader's container process (from the host, as the OOM killer would); the "
    "kubelet restarts the container.",
    "- **Found by this suite** (fixed in `Quarantine::restore`, src/status.rs, with a unit test): "
    "`state_future` first failed (`bench/chaos-before-fix.json`, kwarm bb63c2c). A `kwarm.io/state` written by "
    "hand while the leader was down, with quarantine entries for two images every node held (`retryAt` in "
    "9999, and `null` with attempt 1), made the new leader leave both out of the DaemonSet: all 21 nodes lost "
    "their holders of both images, not back within 120 s (never, for the `null` one). Now an entry for an "
    "image the live DaemonSet holds counts as a retry in progress: warm, it leaves the quarantine.",
    "- **Not in `make test`.** The faults take about 7.5 minutes here (each waits for a healthy start, its "
    "recovery, 5 s and a 10 s quiet window; the three API server restarts take 22 s each), plus the cluster's "
    "start and the image push: more than a few minutes on top of `make test`'s ~30, so `make chaos` is its own "
    "target.",
    "",
]


def render(meta, results):
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["fault"], "ERROR", r["error"][:120], "", "", "", "", ""])
            continue
        mins = r["min_holders"]
        low = min(mins.values()) if mins else None
        rows.append([
            r["fault"], "pass" if r["passed"] else "**FAIL**",
            f"{r['recovery_seconds_from_fault_start']} s" if r["recovered"] else f"> {r['limit_seconds']} s",
            f"{r['fault_seconds']} s",
            f"{low}/{r['nodes']}" + ("" if r["no_loss_expected"] else " (loss expected)"),
            f"{r['seconds_some_holder_missing']} s",
            f"{r['writes']} (+{r['lease_writes']} lease)",
            f"{r['seconds_no_leader']} s / {r['seconds_two_leaders']} s",
        ])
    md = [
        "# kwarm chaos suite",
        "",
        f"_Run {meta['started']} by `make chaos` (`hack/chaos.sh`), {meta['seconds']} s; kwarm "
        f"{meta['kwarm_build']}; load average {meta['load_average_start']} at start, "
        f"{meta['load_average_end']} at the end (2 CPUs, shared). Raw numbers: `bench/chaos.json`._",
        "",
        f"kwarm installed with its chart in the local cluster (real kube-apiserver, etcd, controller-manager, "
        f"scheduler, one real kubelet + containerd node, KWOK nodes): two replicas with leader election, each "
        f"reaching the API server through a proxy of the suite's own, holding {len(meta['images'])} images "
        f"on {meta['nodes']} nodes (the real one and {meta['nodes'] - 1} KWOK nodes).",
        "",
        "- **recovery**: from the start of the fault to the first moment every wanted image is held on every "
        "node (API sample), the DaemonSet holds exactly the wanted images and is rolled out, and exactly one "
        "replica reports `kwarm_leader 1`. The limits are generous bounds, not targets.",
        "- **min holders**: the fewest nodes holding some image at one sample (every 200 ms: a Ready, running "
        "container of a non-terminating holder pod). While the API server could not be read the real node's "
        "containerd was asked instead (`min_real_node_holders_while_api_down` in the JSON).",
        "- **gap**: seconds during which some node lacked some image.",
        "- **writes**: POST/PUT/PATCH/DELETE the two replicas sent through their proxies (exact: the proxies "
        "read every request's HTTP framing), from the fault's start until 5 s after recovery; lease renewals "
        "apart. After that, 10 s with more than 2 writes fails the fault (a write loop).",
        "- **no leader / two leaders**: seconds during which no replica, or both, reported `kwarm_leader 1`.",
        "",
        table(["fault", "result", "recovery", "fault lasted", "min holders", "gap", "writes", "no leader / two"], rows),
        "",
    ]
    md += NOTES
    sabotage = os.path.join(ROOT, "bench", "chaos-sabotage.json")
    if os.path.exists(sabotage):
        with open(sabotage) as f:
            sab = json.load(f)
        for r in sab["faults"]:
            md.append(f"**The suite can fail.** `CHAOS_SABOTAGE=1 make chaos` ({sab['meta']['started']}) runs one "
                      "deliberately broken case: both managers scaled to 0, then another writer changes a holder's "
                      f"image. Result: **{'pass' if r.get('passed') else 'FAIL'}**: "
                      f"{'; '.join(r.get('problems') or [r.get('error', '')])} (`bench/chaos-sabotage.json`).")
            md.append("")
    md += ["## What each fault did and showed", ""]
    for r in results:
        md.append(f"### {r['fault']}: {r['title']}")
        md.append("")
        if "error" in r:
            md.append(f"Could not run: {r['error']}")
            md.append("")
            continue
        by = {}
        for rep in r["requests_by_replica"].values():
            for k, v in rep["by"].items():
                if k.split(" ")[0] in ("POST", "PUT", "PATCH", "DELETE"):
                    by[k] = by.get(k, 0) + v
        md.append(f"- result: {'pass' if r['passed'] else 'FAIL: ' + '; '.join(r['problems'])}")
        md.append(f"- details: `{json.dumps(r['info'], default=str)[:600]}`")
        md.append(f"- writes by kind: {', '.join(f'{k} {v}' for k, v in sorted(by.items())) or 'none'}; "
                  f"requests in all {r['requests']}; 410 Gone seen {r['gone_410_seen']}"
                  + "".join(f"; replica {rep}'s 410s: " + ", ".join(f"{k} {v}" for k, v in sorted(w["gone_by"].items()))
                            for rep, w in sorted(r["requests_by_replica"].items()) if w.get("gone_by")))
        md.append(f"- min holders per image: {r['min_holders']}; while the API server was down, the real "
                  f"node's containerd: {r['min_real_node_holders_while_api_down'] or 'not needed'} "
                  f"({r['samples_api']} API samples, {r['samples_containerd']} containerd, "
                  f"{r['samples_unreadable']} unreadable)")
        md.append(f"- DaemonSet generation {r['ds_generation'][0]} → {r['ds_generation'][1]}; manager restarts "
                  f"{r['manager_restarts']}; leader after: {r['leader_after']}")
        if r.get("loss_why"):
            md.append(f"- holders lost by design: {r['loss_why']}")
        for name, c in (r.get("checks") or {}).items():
            md.append(f"- check *{name}*: {'ok' if c['ok'] else 'FAILED'} ({c['detail']})")
        md.append("")
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
