"""A small Kubernetes API client for the benchmark driver: the admin kubeconfig's client
certificate over keep-alive HTTPS (one connection per thread), JSON in and out, watches as
generators. Standard library only (plus PyYAML to read the kubeconfig)."""
import base64
import http.client
import json
import os
import ssl
import tempfile
import threading
import time
import urllib.parse

import yaml


class ApiError(Exception):
    def __init__(self, status, body, what):
        super().__init__(f"{what}: HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body


class Kube:
    def __init__(self, kubeconfig):
        with open(kubeconfig) as f:
            cfg = yaml.safe_load(f)
        ctx_name = cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        url = urllib.parse.urlparse(cluster["server"])
        self.host, self.port = url.hostname, url.port or 443
        self.server = cluster["server"]
        self._dir = tempfile.mkdtemp(prefix="kwarm-bench-kube-")
        paths = {}
        for key, src in (("ca", cluster), ("cert", user), ("key", user)):
            field = {"ca": "certificate-authority", "cert": "client-certificate", "key": "client-key"}[key]
            path = os.path.join(self._dir, key)
            if field + "-data" in src:
                with open(path, "wb") as f:
                    f.write(base64.b64decode(src[field + "-data"]))
                os.chmod(path, 0o600)
            else:
                path = src[field]
            paths[key] = path
        self.paths = paths
        self.ssl = ssl.create_default_context(cafile=paths["ca"])
        self.ssl.load_cert_chain(paths["cert"], paths["key"])
        self._local = threading.local()

    def _conn(self, fresh=False, timeout=120):
        if fresh:
            return http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)
        c = getattr(self._local, "conn", None)
        if c is None:
            c = http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)
            self._local.conn = c
        return c

    def raw(self, method, path, body=None, ctype="application/json", accept="application/json"):
        """-> (status, bytes). Retries once on a dropped keep-alive connection."""
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            if isinstance(data, str):
                data = data.encode()
        headers = {"Accept": accept, "User-Agent": "kwarm-bench-driver"}
        if data is not None:
            headers["Content-Type"] = ctype
        for attempt in range(3):
            c = self._conn()
            try:
                c.request(method, path, body=data, headers=headers)
                r = c.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                c.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def req(self, method, path, body=None, ctype="application/json", ok=(200, 201, 202), allow=()):
        status, data = self.raw(method, path, body, ctype)
        if status in allow:
            return None
        if status not in ok:
            raise ApiError(status, data, f"{method} {path}")
        return json.loads(data) if data else None

    def get(self, path, allow=()):
        return self.req("GET", path, allow=allow)

    def post(self, path, body, allow=()):
        return self.req("POST", path, body, allow=allow)

    def delete(self, path, allow=(404,)):
        return self.req("DELETE", path, allow=allow)

    def merge_patch(self, path, body):
        return self.req("PATCH", path, body, ctype="application/merge-patch+json")

    def apply(self, path, body, manager="kwarm-bench"):
        sep = "&" if "?" in path else "?"
        return self.req("PATCH", f"{path}{sep}fieldManager={manager}&force=true", body,
                        ctype="application/apply-patch+yaml")

    def list_all(self, path, limit=500):
        """Every item of a collection, paginated."""
        items, cont = [], None
        while True:
            sep = "&" if "?" in path else "?"
            q = f"{path}{sep}limit={limit}" + (f"&continue={urllib.parse.quote(cont)}" if cont else "")
            page = self.get(q)
            items.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return items

    def watch(self, path, resource_version=None, timeout_seconds=3600):
        """Yield (type, object, monotonic arrival time) from a watch; own connection."""
        sep = "&" if "?" in path else "?"
        q = f"{path}{sep}watch=1&allowWatchBookmarks=false&timeoutSeconds={timeout_seconds}"
        if resource_version:
            q += f"&resourceVersion={resource_version}"
        c = self._conn(fresh=True, timeout=timeout_seconds + 30)
        c.request("GET", q, headers={"Accept": "application/json", "User-Agent": "kwarm-bench-driver"})
        r = c.getresponse()
        if r.status != 200:
            raise ApiError(r.status, r.read(), f"WATCH {path}")
        try:
            while True:
                line = r.readline()
                if not line:
                    return
                t = time.monotonic()
                ev = json.loads(line)
                yield ev["type"], ev["object"], t
        finally:
            c.close()

    def metrics_text(self):
        status, data = self.raw("GET", "/metrics", accept="text/plain")
        if status != 200:
            raise ApiError(status, data, "GET /metrics")
        return data.decode()
