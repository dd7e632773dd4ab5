#!/usr/bin/env python3
"""A routerd client in Python, written from docs/protocol.md alone.

It keeps an in-process cache (a dict, with a tag index beside it) and a copy
of each value in a cache Redis, registered under tags with the shipped
lua/set.lua, or read through under a lease (fetch, with lua/lease.lua); it publishes domain changes by raw XADD to the tenant's ingress
partition; and it receives the invalidations that `routerd agent --deliver`
POSTs to a small HTTP receiver, which drops the keys from the dict.

Run against a bus Redis with `routerd serve` and an agent started as

    routerd agent --redis BUS --cache-redis CACHE --service app --matrix M \\
        --deliver http://127.0.0.1:8766/

and the domain `user` mapped to the tag `active` for the service:

    python3 tagged_cache.py --redis BUS --cache-redis CACHE --listen 127.0.0.1:8766

It prints one line per step and "OK" at the end, or "FAIL: …" and exits 1.
Needs redis-py (Debian: apt-get install python3-redis).
"""

import argparse
import json
import os
import secrets
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

LUA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lua")
SET_LUA = os.path.join(LUA_DIR, "set.lua")


# --- Publishing (protocol.md, section 2) -----------------------------------

def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def partition(tenant: str, n: int) -> int:
    return fnv1a32(tenant.encode("ascii")) % n if n > 1 else 0


class Publisher:
    """Appends events to the ingress stream of the tenant's partition."""

    def __init__(self, bus: redis.Redis, prefix: str = "invalidate"):
        self.bus, self.prefix = bus, prefix

    def partitions(self) -> int:
        raw = self.bus.get(f"{self.prefix}:ingress:partitions")
        if raw is None:
            return 8  # the default while no router has written it
        n = int(raw)
        if not 1 <= n <= 1024:
            raise ValueError(f"{self.prefix}:ingress:partitions holds {n}, not a partition count")
        return n

    def publish(self, tenant: str, domain: str, keys=None, whole_tag=False, entity=None, origin=None) -> str:
        """Publishes one event and returns its id. Name keys, or say whole_tag."""
        if whole_tag == bool(keys):
            raise ValueError("give keys, or whole_tag=True without keys (an empty key list is refused)")
        event = {"id": secrets.token_hex(14), "tenant": tenant, "domain": domain,
                 "ts": int(time.time() * 1000)}
        if keys:
            event["keys"] = list(keys)
        if entity:
            event["entity"] = entity
            if whole_tag:
                event["whole_tag"] = True  # else an entity alone is entity-level (protocol.md, 2.3)
        if origin:
            event["origin"] = origin
        stream = f"{self.prefix}:ingress:{{{partition(tenant, self.partitions())}}}"  # literal braces
        self.bus.xadd(stream, {"event": json.dumps(event, separators=(",", ":"))})
        return event["id"]


# --- Caching under tags (protocol.md, section 3) ----------------------------

class TaggedCache:
    """An in-process cache with a tag index, and a copy in a cache Redis
    written with lua/set.lua."""

    def __init__(self, cache_redis: redis.Redis):
        with open(SET_LUA) as f:
            self._set = cache_redis.register_script(f.read())  # EVALSHA, loaded again on NOSCRIPT
        with open(os.path.join(LUA_DIR, "lease.lua")) as f:
            self._lease = cache_redis.register_script(f.read())
        with open(os.path.join(LUA_DIR, "release.lua")) as f:
            self._release = cache_redis.register_script(f.read())
        self.redis = cache_redis
        self._lock = threading.Lock()
        self._values = {}  # (tenant, key) -> value
        self._tags = {}    # (tenant, tag) -> set of keys

    @staticmethod
    def full_name(tenant: str, key: str) -> str:
        return f"{{tenant:{tenant}}}:{key}"

    def index_tenant(self, tenant: str):
        """Records the tenant in the cache Redis's tenant index before each
        tagged value (protocol.md, section 3): a subscriber of every tenant
        finds there the tenants whose tags it must invalidate when the bus has
        lost its data. A command of its own, as the set lives in no tenant's
        slot; sent every time, not remembered, so that a cache Redis that lost
        its data has it back with the next value."""
        self.redis.sadd("routerd:tenants", tenant)

    def put(self, tenant: str, key: str, value: str, tags, ttl_ms: int = 0):
        full = self.full_name(tenant, key)
        # The value, its lease (set.lua deletes it: a fill in flight of older
        # data is void), then its tag sets.
        keys = [full, f"{{tenant:{tenant}}}:lease:{full}"] + [f"{{tenant:{tenant}}}:tag:{t}" for t in tags]
        self.index_tenant(tenant)
        self._set(keys=keys, args=[value, ttl_ms])
        with self._lock:
            self._values[(tenant, key)] = value
            for t in tags:
                self._tags.setdefault((tenant, t), set()).add(key)

    def fetch(self, tenant: str, key: str, tags, load, ttl_ms: int = 0,
              lease_ms: int = 5000, wait_limit: float = 10.0) -> str:
        """Reads through the cache Redis under a lease (protocol.md, 3.2): a
        hit is one GET; on a miss only the lease holder calls load(), the
        others wait for its value, and what load() returned is cached only if
        no invalidation of the key came in the meantime (it is returned
        either way)."""
        full = self.full_name(tenant, key)
        value = self.redis.get(full)
        if value is not None:
            return value.decode()
        lease = f"{{tenant:{tenant}}}:lease:{full}"
        sets = [f"{{tenant:{tenant}}}:tag:{t}" for t in tags]
        self.index_tenant(tenant)
        token = secrets.token_hex(16)
        deadline, pause = time.monotonic() + wait_limit, 0.002
        while True:
            reply = self._lease(keys=[full, lease] + sets, args=[token, lease_ms])
            if reply[0] == b"HIT":
                return reply[1].decode()
            if reply[0] == b"LEASED":
                break
            left = deadline - time.monotonic()  # WAIT: another fill holds it
            if left <= 0:
                raise TimeoutError(f"{full}: another fill held the lease for {wait_limit}s")
            time.sleep(min(pause, left, reply[1] / 1000 + 0.001))
            pause = min(2 * pause, 0.05)
        try:
            value = load()
        except BaseException:
            self._release(keys=[lease, full] + sets, args=[token])  # the next miss need not wait
            raise
        # The value's sets, then those lease.lua added the key to (the same
        # here): -1 when an invalidation took the key out of one, not cached.
        self._set(keys=[full, lease] + sets + sets, args=[value, ttl_ms, 0, token, len(sets)])
        return value

    def get(self, tenant: str, key: str):
        with self._lock:
            return self._values.get((tenant, key))

    def drop_keys(self, tenant: str, tag: str, keys):
        with self._lock:
            for k in keys:
                self._values.pop((tenant, k), None)
                for members in self._tags.values():
                    members.discard(k)

    def drop_tag(self, tenant: str, tag: str):
        with self._lock:
            for k in self._tags.pop((tenant, tag), set()):
                self._values.pop((tenant, k), None)

    def reset(self):
        with self._lock:
            self._values.clear()
            self._tags.clear()


# --- Receiving from the agent (protocol.md, section 5.1) --------------------

class Receiver:
    """The HTTP endpoint `routerd agent --deliver URL` posts to."""

    def __init__(self, cache: TaggedCache, listen: str):
        self.cache = cache
        self.received = []  # every delivery, in order
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    inv = json.loads(body)
                    receiver.apply(inv)
                except (ValueError, KeyError, TypeError) as e:
                    self.send_response(400)  # not 2xx: the agent retries it
                    self.end_headers()
                    self.wfile.write(f"bad invalidation: {e}\n".encode())
                    return
                self.send_response(204)  # 2xx only once the keys are gone
                self.end_headers()

            def log_message(self, *args):
                pass

        host, port = listen.rsplit(":", 1)
        self.server = ThreadingHTTPServer((host, int(port)), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def apply(self, inv: dict):
        if inv.get("reset"):
            self.cache.reset()
        elif inv.get("whole_tag") or inv.get("plain"):
            # put registers plain values only (no reference index here): an
            # entity-level delivery ("plain") drops them all, as a whole tag.
            self.cache.drop_tag(inv["tenant"], inv["tag"])
        elif inv.get("keys"):
            # Refs beside keys name values cached by reference: none here.
            self.cache.drop_keys(inv["tenant"], inv["tag"], inv["keys"])
        with self.cond:
            self.received.append(inv)
            self.cond.notify_all()

    def wait_event(self, event_id: str, timeout: float) -> dict:
        """Waits for the delivery of the invalidation of one event."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for inv in self.received:
                    if inv.get("event") == event_id:
                        return inv
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no invalidation for event {event_id} within {timeout}s; received: {self.received}")
                self.cond.wait(left)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def check_vectors(doc_path: str) -> int:
    """Checks fnv1a32 and partition against the test vectors of protocol.md."""
    text = open(doc_path).read()
    block = text.split("<!-- fnv-vectors:begin -->", 1)[1].split("<!-- fnv-vectors:end -->", 1)[0]
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for line in block.strip().splitlines()]
    ns = [int(h.split("=")[1]) for h in rows[0][2:]]  # "p, N = 8"
    bad = 0
    for row in rows[2:]:
        tenant, want = row[0], int(row[1], 16)
        if fnv1a32(tenant.encode("ascii")) != want:
            print(f"FAIL: FNV-1a-32({tenant!r}) = {fnv1a32(tenant.encode('ascii')):#010x}, the doc says {want:#010x}")
            bad += 1
        for n, p in zip(ns, row[2:]):
            if partition(tenant, n) != int(p):
                print(f"FAIL: partition({tenant!r}, {n}) = {partition(tenant, n)}, the doc says {p}")
                bad += 1
    if bad:
        return 1
    print(f"OK: {len(rows) - 2} partition vectors of {doc_path}")
    return 0


def wait_ready(url: str, timeout: float):
    """Polls a /readyz until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready within {timeout}s")
        time.sleep(0.05)


def check(cond: bool, what: str):
    if not cond:
        raise AssertionError(what)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", default=os.environ.get("ROUTERD_REDIS_URL", "redis://127.0.0.1:6390"), help="the bus Redis")
    ap.add_argument("--cache-redis", default=os.environ.get("ROUTERD_CACHE_REDIS_URL"), help="the cache Redis (the agent's --cache-redis); the bus by default")
    ap.add_argument("--listen", default="127.0.0.1:8766", help="address of the receiver the agent's --deliver points at")
    ap.add_argument("--tenant", default="acme")
    ap.add_argument("--domain", default="user", help="a domain the matrix maps to --tag")
    ap.add_argument("--tag", default="active", help="a tag the agent's service subscribes to")
    ap.add_argument("--timeout", type=float, default=30, help="seconds to wait for each invalidation")
    ap.add_argument("--agent-ready", metavar="URL", help="the agent's /readyz: wait for it (the agent is ready once its reset, if any, is delivered here) before publishing")
    ap.add_argument("--check-vectors", metavar="PROTOCOL_MD", help="only check the partition function against the doc's test vectors")
    a = ap.parse_args()
    if a.check_vectors:
        return check_vectors(a.check_vectors)

    bus = redis.Redis.from_url(a.redis)
    cache_redis = redis.Redis.from_url(a.cache_redis or a.redis)
    cache = TaggedCache(cache_redis)
    pub = Publisher(bus)
    recv = Receiver(cache, a.listen)
    t, run = a.tenant, secrets.token_hex(4)
    try:
        if a.agent_ready:
            wait_ready(a.agent_ready, a.timeout)
        # Deliveries come in order, and a reset (if the agent sends one) comes
        # first: once a probe event is delivered, nothing earlier can still
        # drop what is cached next.
        probe = pub.publish(t, a.domain, keys=[f"probe:{run}"], origin="python-example")
        recv.wait_event(probe, a.timeout)
        print(f"receiver at {a.listen}: the agent delivers (partition {partition(t, pub.partitions())} of {pub.partitions()} for {t})")

        one, two, other = f"user:{run}:1042", f"user:{run}:7", f"product:{run}:9"
        cache.put(t, one, "Ada", [a.tag], ttl_ms=600000)
        cache.put(t, two, "Grace", [a.tag], ttl_ms=600000)
        cache.put(t, other, "Lamp", ["not-routed"], ttl_ms=600000)
        check(cache_redis.sismember("routerd:tenants", t), f"{t} is in the cache Redis's tenant index routerd:tenants")
        print(f"cached {one}, {two} under {a.tag} and {other} under not-routed (SADD routerd:tenants {t}, set.lua)")

        ev = pub.publish(t, a.domain, keys=[one], entity="1042", origin="python-example")
        inv = recv.wait_event(ev, a.timeout)
        check(inv.get("tenant") == t and inv.get("tag") == a.tag and inv.get("keys") == [one],
              f"the delivery names tenant, tag and key: {inv}")
        check(isinstance(inv.get("version"), int) and inv["version"] >= 1 and inv.get("epoch"),
              f"the delivery has a version and an epoch: {inv}")
        check(cache.get(t, one) is None, f"{one} left the in-process cache")
        check(cache.get(t, two) == "Grace", f"{two}, not named, stayed in the in-process cache")
        check(cache_redis.exists(cache.full_name(t, one)) == 0, f"the agent deleted {cache.full_name(t, one)} from the cache Redis")
        check(cache_redis.exists(cache.full_name(t, two)) == 1, f"{cache.full_name(t, two)} stayed in the cache Redis")
        print(f"published {ev} naming {one}: delivered as version {inv['version']}; {one} dropped, {two} kept")

        ev = pub.publish(t, a.domain, whole_tag=True, origin="python-example")
        inv = recv.wait_event(ev, a.timeout)
        check(inv.get("whole_tag") is True and "keys" not in inv, f"a whole-tag delivery: {inv}")
        check(cache.get(t, two) is None, f"{two} left the in-process cache with its tag")
        check(cache.get(t, other) == "Lamp", f"{other}, under another tag, stayed")
        check(cache_redis.exists(cache.full_name(t, two)) == 0, f"the agent deleted {cache.full_name(t, two)} from the cache Redis")
        print(f"published {ev} for the whole tag {a.tag}: delivered as version {inv['version']}; {two} dropped, {other} kept")

        # Read through a lease, and race it: the load reads "old", then the
        # row changes and its invalidation is applied before the load returns.
        racy = f"user:{run}:99"
        def load_old():
            ev = pub.publish(t, a.domain, keys=[racy], origin="python-example")
            recv.wait_event(ev, a.timeout)  # the agent took the key out of its tag
            return "old"
        check(cache.fetch(t, racy, [a.tag], load_old, ttl_ms=600000) == "old", "fetch returns what it loaded")
        check(cache_redis.exists(cache.full_name(t, racy)) == 0, f"a value loaded before the invalidation of {racy} was not cached after it")
        check(cache.fetch(t, racy, [a.tag], lambda: "new", ttl_ms=600000) == "new", "the next fetch loads again")
        check(cache.fetch(t, racy, [a.tag], lambda: "unused", ttl_ms=600000) == "new", "then it is a hit")
        check(cache_redis.sismember(f"{{tenant:{t}}}:tag:{a.tag}", cache.full_name(t, racy)), f"{racy} is registered under {a.tag}")
        print(f"fetched {racy} under a lease: the value loaded during its invalidation was not cached, the next one was")
        print("OK: python example: cached under tags, published by XADD, invalidated through the agent")
        return 0
    except (AssertionError, TimeoutError) as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    finally:
        recv.close()


if __name__ == "__main__":
    sys.exit(main())
