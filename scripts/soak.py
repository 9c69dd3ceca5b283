#!/usr/bin/env python3
"""A soak: mixed load against a real `sluice serve` for a while, sampling
what grows — resident memory, open files, threads, database size — and
failing when any of them keeps growing. Run through scripts/soak.sh.

The load, all at once, on the real clock:

- ingest from three tenants (NDJSON batches, a steady rate);
- hot swaps of a rule every 20 s, alternating two versions;
- pause and resume of another every 15 s;
- a hostile tenant whose rule loops, panics, exhausts memory and shouts
  on some of its events (every 25th);
- two rules feeding each other's outputs up to the hop limit;
- a tenant opening new partitions until its per-rule quota;
- feed subscribers connecting, reading a little and dropping;
- retention pruning what is older than 2 minutes.

Only the Python standard library.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ADMIN = "soak-admin-token"


class Server:
    def __init__(self, binary, workdir):
        self.db = os.path.join(workdir, "soak.db")
        self.proc = subprocess.Popen(
            [binary, "serve", "--db", self.db, "--listen", "127.0.0.1:0",
             "--durability", "normal", "--retain", "2m", "--retain-every", "5s",
             # Ids are remembered (as tombstones once pruned) for the
             # dedupe window: 5 minutes, so that the run sees the steady
             # state a day's window reaches after a day.
             "--dedupe-window", "5m",
             "--heartbeat", "1s", "--shutdown-grace", "5s"],
            env={**os.environ, "SLUICE_ADMIN_TOKEN": ADMIN, "SLUICE_LOG": "warn"},
            stdout=subprocess.PIPE, stderr=open(os.path.join(workdir, "server.log"), "wb"),
        )
        for line in self.proc.stdout:
            line = line.decode().strip()
            if line.startswith("listening on "):
                self.url = line[len("listening on "):]
                break
        else:
            sys.exit("error: sluice serve exited before listening (see server.log)")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def sample(self):
        pid = self.proc.pid
        status = open(f"/proc/{pid}/status").read().splitlines()
        field = lambda name: int(next(l for l in status if l.startswith(name)).split()[1])
        size = sum(os.path.getsize(os.path.join(os.path.dirname(self.db), f))
                   for f in os.listdir(os.path.dirname(self.db)) if f.startswith("soak.db"))
        return {
            "rss_mb": field("VmRSS:") / 1024,
            # The heap's share: the rest is the database's pages mapped
            # in (mmap), which the kernel takes back at will.
            "anon_mb": field("RssAnon:") / 1024,
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": field("Threads:"),
            "db_mb": size / (1 << 20),
        }

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


class Client:
    def __init__(self, url):
        self.url = url
        self.lock = threading.Lock()
        self.counts = {}

    def count(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def call(self, method, path, token, body=None, content_type=None, timeout=60):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("authorization", f"Bearer {token}")
        if content_type:
            req.add_header("content-type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                self.count(f"{r.status // 100}xx")
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            self.count(f"{e.code // 100}xx")
            if e.code >= 500:
                self.count(f"5xx {method} {path.split('?')[0]}: {e.read()[:200]!r}")
            return e.code, e.read()
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            self.count(f"no answer: {type(e).__name__}")
            return None, b""

    def json(self, method, path, token, value):
        return self.call(method, path, token, json.dumps(value).encode(), "application/json")

    def deploy(self, token, name, manifest, wasm):
        boundary = "soakboundary7d3f"
        parts = [
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{manifest}\r\n".encode(),
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"rule.wasm\"\r\n"
            f"Content-Type: application/wasm\r\n\r\n".encode() + wasm + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        return self.call("PUT", f"/v1/rules/{name}", token, b"".join(parts),
                         f"multipart/form-data; boundary={boundary}", timeout=300)


def batch(name, version, count, extra=""):
    return (f'name = "{name}"\nversion = {version}\n[trigger.batch]\ncount = {count}\n'
            f'window = "30s"\nexpire = "fire"\n{extra}')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--guests", required=True, help="directory with echo.wasm and hostile.wasm")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=int, default=50, help="events per second per tenant")
    ap.add_argument("--out", default=None, help="where the samples go (CSV)")
    args = ap.parse_args()
    echo = open(os.path.join(args.guests, "echo.wasm"), "rb").read()
    hostile = open(os.path.join(args.guests, "hostile.wasm"), "rb").read()
    work = tempfile.mkdtemp(prefix="sluice-soak-")
    server = Server(args.binary, work)
    c = Client(server.url)
    tokens = {}
    quotas = {"q": {"max_partitions_per_rule": 200}}
    for t in ["a", "h", "q", "p"]:
        status, body = c.json("POST", "/v1/tenants", ADMIN, {"name": t, "quotas": quotas.get(t, {})})
        assert status == 201, (status, body)
        tokens[t] = json.loads(body)["token"]["token"]
    fast = '[limits]\ndeadline = "200ms"\n[retry]\nmax_attempts = 2\nbackoff = "100ms"\n'
    for token, name, manifest, wasm in [
        (tokens["a"], "digest", batch("digest", 1, 5), echo),
        (tokens["a"], "held", batch("held", 1, 20), echo),
        (tokens["p"], "ping", batch("ping", 1, 1, '[outputs]\nmax_hops = 4\n'), echo),
        (tokens["p"], "pong", batch("pong", 1, 1, '[outputs]\nmax_hops = 4\n'), echo),
        (tokens["h"], "hostile", batch("hostile", 1, 2, fast), hostile),
        (tokens["q"], "keys", batch("keys", 1, 1000), echo),
    ]:
        status, body = c.deploy(token, name, manifest, wasm)
        assert status == 201, (name, status, body)
    stop = threading.Event()
    started = time.time()

    def every(seconds, work):
        def loop():
            n = 0
            while not stop.wait(seconds):
                work(n)
                n += 1
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        return t

    def ingest(tenant, make, rate=None):
        def send(n):
            lines = "".join(json.dumps(make(n, i)) + "\n" for i in range(max(1, (rate or args.rate) // 5)))
            c.call("POST", "/v1/events", tokens[tenant], lines.encode(), "application/x-ndjson")
        return send

    hostile_kinds = ["loop", "panic", "bomb", "shout", "handler-retry", "handler-fatal", "flaky"]
    threads = [
        every(0.2, ingest("a", lambda n, i: {"source": "soak", "kind": "thing",
                                              "payload": {"key": f"k{i % 50}", "n": n}})),
        # A hostile rule costs up to its deadline per call, several calls
        # per bad event (retries, isolating a poison event): a fifth of the
        # rate keeps it from falling behind for good.
        every(0.2, ingest("h", lambda n, i: {"source": "soak",
                                              "kind": hostile_kinds[n % 7] if (n + i) % 25 == 0 else "fine",
                                              "payload": {"n": n}}, rate=args.rate // 5)),
        every(0.2, ingest("q", lambda n, i: {"source": "soak", "kind": "thing",
                                              "payload": {"key": f"new-{n}-{i}"}}, rate=args.rate // 2)),
        # Each event bounces between ping and pong up to the hop limit.
        every(0.2, ingest("p", lambda n, i: {"source": "soak", "kind": "thing",
                                              "payload": {"n": n}}, rate=5)),
    ]

    def swap(n):
        c.deploy(tokens["a"], "digest", batch("digest", n + 2, 5 + n % 2), echo)
    threads.append(every(20, swap))

    def pause_resume(n):
        c.call("POST", f"/v1/rules/held/{'pause' if n % 2 == 0 else 'resume'}", tokens["a"])
    threads.append(every(7.5, pause_resume))

    def feed(n):
        req = urllib.request.Request(server.url + "/v1/feed")
        req.add_header("authorization", f"Bearer {tokens['a']}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                deadline = time.time() + 1 + n % 3
                while time.time() < deadline and r.readline():
                    pass
            c.count("feeds")
        except Exception as e:  # a dropped feed is the point
            c.count(f"feed error: {type(e).__name__}")
    for _ in range(3):
        threads.append(every(0.5, feed))

    samples = []
    out = open(args.out, "w") if args.out else None
    if out:
        out.write("seconds,rss_mb,anon_mb,fds,threads,db_mb\n")
    deadline = started + args.minutes * 60
    interval = max(2.0, min(30.0, args.minutes * 60 / 60))
    while time.time() < deadline:
        time.sleep(min(interval, max(0.0, deadline - time.time())))
        if server.proc.poll() is not None:
            sys.exit(f"error: sluice serve died ({server.proc.returncode}); see {work}/server.log")
        s = server.sample()
        s["seconds"] = round(time.time() - started)
        samples.append(s)
        if out:
            out.write(f"{s['seconds']},{s['rss_mb']:.1f},{s['anon_mb']:.1f},{s['fds']},"
                      f"{s['threads']},{s['db_mb']:.1f}\n")
            out.flush()
        print(f"{s['seconds']:>6}s  rss {s['rss_mb']:7.1f} MB (heap {s['anon_mb']:7.1f})  fds {s['fds']:4}  "
              f"threads {s['threads']:3}  "
              f"db {s['db_mb']:7.1f} MB", flush=True)
    stop.set()
    rules = []
    for t in tokens:
        status, body = c.call("GET", "/v1/rules", tokens[t])
        rules += json.loads(body) if status == 200 else []
    for r in rules:
        print(f"  rule {r['name']}: {r['status']}, cursor {r['cursor']}, pending {r['pending_fires']}, "
              f"dead letters {r['dead_letters']}, partitions {r['partitions']}")
    code = server.stop()

    problems = []
    if code != 0:
        problems.append(f"sluice serve exited with {code} on SIGTERM")
    for what, n in sorted(c.counts.items()):
        print(f"  {what}: {n}")
        if what.startswith("5xx ") or what.startswith("no answer"):
            problems.append(f"{n} × {what}")
    if c.counts.get("2xx", 0) == 0:
        problems.append("no request succeeded")
    for r in rules:
        if r.get("status") == "failed":
            problems.append(f"rule {r['name']} failed: {r.get('last_error')}")
    # Growth: the last third of the run against the middle third. A soak
    # shorter than 10 minutes only checks the run itself.
    third = len(samples) // 3
    if args.minutes >= 10 and third >= 2:
        mid, last = samples[third:2 * third], samples[2 * third:]
        limits = {"anon_mb": (1.25, 64), "fds": (1.25, 16), "threads": (1.25, 8), "db_mb": (1.5, 64)}
        for key, (ratio, slack) in limits.items():
            a = statistics.median(s[key] for s in mid)
            b = statistics.median(s[key] for s in last)
            print(f"  {key}: middle third {a:.1f}, last third {b:.1f}")
            if b > a * ratio and b - a > slack:
                problems.append(f"{key} keeps growing: {a:.1f} in the middle third, {b:.1f} in the last")
    if problems:
        print("soak failed:\n- " + "\n- ".join(problems), file=sys.stderr)
        print(f"(server log: {work}/server.log)", file=sys.stderr)
        sys.exit(1)
    print(f"soak passed: {args.minutes} minutes, {len(samples)} samples")


if __name__ == "__main__":
    main()
