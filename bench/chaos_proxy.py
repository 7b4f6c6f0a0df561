"""A TLS-terminating TCP proxy in front of the API server, one per manager replica, for the chaos
suite (bench/chaos.py).

The replicas run in the cluster on the host network; their KUBERNETES_SERVICE_PORT points here
instead of at the API server. The proxy presents a serving certificate for 127.0.0.1 signed by
the cluster's CA (the CA the pods already trust), opens its own TLS connection to the API server
for each client connection and relays the bytes unchanged both ways: the pod's own bearer token
authenticates it, so the API server sees the manager exactly as without the proxy.

On the way it reads the HTTP/1.1 framing (never changing a byte), which makes two things exact:
  - every request the replica sent (method, path, response status), the API server's
    apiserver_request_total cut down to this one client;
  - `"code":410` inside watch streams (a watch ERROR event: resource version too old).

And it can cut the replica off: `cut()` stops relaying in both directions (bytes already read are
held, new connections wait before their TLS handshake), like a network partition where packets
are dropped and TCP keeps retransmitting; `heal()` resumes every held connection, and
`heal(reset=True)` closes them all instead (the client reconnects and resumes its watches from
the last resource version it saw).
"""
import os
import re
import socket
import ssl
import subprocess
import threading
import time

WATCH_QUERY = re.compile(r"[?&]watch=(1|true)(&|$)")
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
GONE = b'"code":410'


def serving_certificate(pki_dir, out_dir):
    """A key and certificate for 127.0.0.1 signed by the cluster CA -> (cert path, key path)."""
    os.makedirs(out_dir, exist_ok=True)
    key, csr, crt, ext = (os.path.join(out_dir, f"proxy.{x}") for x in ("key", "csr", "crt", "ext"))
    if os.path.exists(crt) and os.path.getmtime(crt) > os.path.getmtime(os.path.join(pki_dir, "ca.crt")):
        return crt, key
    with open(ext, "w") as f:
        f.write("basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\n"
                "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "genrsa", "-out", key, "2048")
    run("openssl", "req", "-new", "-key", key, "-subj", "/CN=kwarm-chaos-proxy", "-out", csr)
    run("openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(pki_dir, "ca.crt"),
        "-CAkey", os.path.join(pki_dir, "ca.key"), "-set_serial", "0x" + os.urandom(8).hex(),
        "-days", "2", "-sha256", "-extfile", ext, "-out", crt)
    return crt, key


class Framing:
    """Incremental HTTP/1.1 message framing of one direction of a connection. `feed` returns the
    heads of the messages that started in the data (first line and headers), and counts GONE in
    bodies. `expect_no_body` is told, for responses, which requests were HEAD."""

    def __init__(self):
        self.buf = b""
        self.state = "head"
        self.left = 0  # body bytes left (length framing) or chunk bytes left
        self.gone = 0
        self.tail = b""
        self.broken = False

    def feed(self, data, head_has_no_body=lambda first: False):
        heads = []
        if self.broken:
            return heads
        self.buf += data
        while self.buf:
            if self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > 1 << 20:
                        self.broken = True
                    return heads
                head = self.buf[:end].decode("latin-1")
                self.buf = self.buf[end + 4:]
                lines = head.split("\r\n")
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                heads.append(lines[0])
                first = lines[0]
                status = first.split(" ")[1] if first.startswith("HTTP/") else ""
                if head_has_no_body(first) or status in ("204", "304") or status.startswith("1"):
                    continue
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    self.state = "chunk-size"
                elif headers.get("content-length", "0").strip() not in ("", "0"):
                    self.state, self.left = "body", int(headers["content-length"])
                elif first.startswith("HTTP/") and "content-length" not in headers:
                    self.state = "to-close"
            elif self.state == "body":
                take = self.buf[:self.left]
                self.scan(take)
                self.left -= len(take)
                self.buf = self.buf[len(take):]
                if self.left == 0:
                    self.state = "head"
            elif self.state == "chunk-size":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return heads
                size = int(self.buf[:end].split(b";")[0].strip() or b"0", 16)
                self.buf = self.buf[end + 2:]
                self.state, self.left = ("chunk", size) if size else ("trailer", 0)
            elif self.state == "chunk":
                take = self.buf[:self.left]
                self.scan(take)
                self.left -= len(take)
                self.buf = self.buf[len(take):]
                if self.left == 0:
                    self.state = "chunk-end"
            elif self.state == "chunk-end":
                if len(self.buf) < 2:
                    return heads
                self.buf = self.buf[2:]
                self.state = "chunk-size"
            elif self.state == "trailer":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return heads
                line, self.buf = self.buf[:end], self.buf[end + 2:]
                if not line:
                    self.state = "head"
            elif self.state == "to-close":
                self.scan(self.buf)
                self.buf = b""
        return heads

    def scan(self, data):
        joined = self.tail + data
        self.gone += joined.count(GONE) - self.tail.count(GONE)
        self.tail = joined[-(len(GONE) - 1):]


class ApiProxy:
    """See the module's docstring. `requests` is a list of dicts (t, method, path, verb, status)
    in the order the requests were sent; `mark()`/`since(mark)` slice it."""

    def __init__(self, name, upstream_port, ca_file, cert, key, port=0):
        self.name = name
        self.upstream = ("127.0.0.1", upstream_port)
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(cert, key)
        self.server_ctx.set_alpn_protocols(["http/1.1"])
        self.client_ctx = ssl.create_default_context(cafile=ca_file)
        self.client_ctx.set_alpn_protocols(["http/1.1"])
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.requests = []
        self.gone = 0
        self.conns = set()
        self.open = threading.Event()
        self.open.set()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{name}").start()

    # ------------------------------------------------------------------ control

    def cut(self):
        self.open.clear()

    def heal(self, reset=False):
        if reset:
            with self.lock:
                conns = list(self.conns)
            for c in conns:
                c.close()
        self.open.set()

    def mark(self):
        with self.lock:
            return len(self.requests)

    def since(self, mark=0):
        with self.lock:
            return list(self.requests[mark:])

    def stop(self):
        self.stopped = True
        self.open.set()
        self.listener.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.close()

    # ------------------------------------------------------------------ relaying

    def _accept(self):
        while not self.stopped:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, raw):
        conn = _Conn(self, raw)
        with self.lock:
            self.conns.add(conn)
        try:
            self.open.wait()
            if conn.closed:
                return
            raw.settimeout(30)
            client = self.server_ctx.wrap_socket(raw, server_side=True)
            client.settimeout(None)
            up = socket.create_connection(self.upstream, timeout=10)
            upstream = self.client_ctx.wrap_socket(up, server_hostname="127.0.0.1")
            upstream.settimeout(None)
            conn.client, conn.upstream = client, upstream
            if conn.closed:
                return
            t = threading.Thread(target=conn.pump_responses, daemon=True)
            t.start()
            conn.pump_requests()
            t.join()
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            conn.close()
            with self.lock:
                self.conns.discard(conn)

    def _record(self, first_line):
        method, _, rest = first_line.partition(" ")
        path = rest.rsplit(" ", 1)[0]
        verb = method
        if method == "GET" and WATCH_QUERY.search(path):
            verb = "WATCH"
        entry = {"t": time.monotonic(), "method": method, "path": path, "verb": verb, "status": None}
        with self.lock:
            self.requests.append(entry)
        return entry


class _Conn:
    def __init__(self, proxy, raw):
        self.proxy, self.raw = proxy, raw
        self.client = self.upstream = None
        self.closed = False
        self.pending = []  # requests sent, waiting for their response heads
        self.cond = threading.Lock()

    def close(self):
        self.closed = True
        for s in (self.client, self.upstream, self.raw):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass

    def _relay(self, src, dst, on_data):
        while not self.closed:
            data = src.recv(65536)
            if not data:
                break
            on_data(data)
            self.proxy.open.wait()
            if self.closed:
                break
            dst.sendall(data)
        self.close()

    def pump_requests(self):
        framing = Framing()

        def on_data(data):
            for head in framing.feed(data):
                entry = self.proxy._record(head)
                with self.cond:
                    self.pending.append(entry)
        self._relay(self.client, self.upstream, on_data)

    def pump_responses(self):
        framing = Framing()

        def no_body(first):
            with self.cond:
                return bool(self.pending) and self.pending[0]["method"] == "HEAD"

        current = {}

        def on_data(data):
            before = framing.gone
            for head in framing.feed(data, no_body):
                with self.cond:
                    entry = self.pending.pop(0) if self.pending else None
                if entry is not None:
                    current["entry"] = entry
                    parts = head.split(" ")
                    entry["status"] = parts[1] if len(parts) > 1 else "?"
                    if entry["status"] == "410":
                        entry["gone"] = 1
                        with self.proxy.lock:
                            self.proxy.gone += 1
            if framing.gone > before:
                # a watch ERROR event in the body of the response being streamed
                if "entry" in current:
                    current["entry"]["gone"] = current["entry"].get("gone", 0) + framing.gone - before
                with self.proxy.lock:
                    self.proxy.gone += framing.gone - before
        try:
            self._relay(self.upstream, self.client, on_data)
        except (OSError, ssl.SSLError, ValueError):
            self.close()


def summarize(requests):
    """-> {"all": n, "writes": n, "lease_writes": n, "by": {"VERB resource": n}, "failed": n,
    "gone_by": {"VERB resource": 410s}}."""
    out = {"all": len(requests), "writes": 0, "lease_writes": 0, "by": {}, "failed": 0, "gone_by": {}}
    for r in requests:
        if r["method"] in WRITE_METHODS:
            out["writes"] += 1
            if "/leases/" in r["path"] or r["path"].split("?")[0].endswith("/leases"):
                out["lease_writes"] += 1
        key = f"{r['verb']} {resource_of(r['path'])}"
        out["by"][key] = out["by"].get(key, 0) + 1
        if r["status"] and not r["status"].startswith("2"):
            out["failed"] += 1
        if r.get("gone"):
            out["gone_by"][key] = out["gone_by"].get(key, 0) + r["gone"]
    return out


def resource_of(path):
    """/apis/apps/v1/namespaces/ns/daemonsets/name/status?x -> daemonsets/status"""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts and parts[0] == "api":
        parts = parts[2:]
    elif parts and parts[0] == "apis":
        parts = parts[3:]
    if len(parts) >= 2 and parts[0] == "namespaces":
        parts = parts[2:]
    if not parts:
        return "/"
    resource = parts[0]
    if len(parts) >= 3:
        resource += "/" + parts[2]
    return resource
