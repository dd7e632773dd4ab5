#!/usr/bin/env node
// A routerd client in Node.js (ioredis), written from docs/protocol.md alone.
//
// It keeps an in-process cache (a Map, with a tag index beside it) and a copy
// of each value in a cache Redis, registered under tags with the shipped
// lua/set.lua; it publishes domain changes by raw XADD to the tenant's ingress
// partition; and it receives the invalidations that `routerd agent --deliver`
// POSTs to a small HTTP receiver, which drops the keys from the Map.
//
// Run against a bus Redis with `routerd serve` and an agent started as
//
//   routerd agent --redis BUS --cache-redis CACHE --service app --matrix M \
//       --deliver http://127.0.0.1:8767/
//
// and the domain `user` mapped to the tag `active` for the service:
//
//   npm ci && node tagged_cache.js --redis BUS --cache-redis CACHE --listen 127.0.0.1:8767
//
// It prints one line per step and "OK" at the end, or "FAIL: …" and exits 1.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { parseArgs } = require('node:util');
const Redis = require('ioredis');

const LUA_DIR = path.join(__dirname, '..', '..', 'lua');
const SET_LUA = path.join(LUA_DIR, 'set.lua');

// --- Publishing (protocol.md, section 2) -----------------------------------

function fnv1a32(bytes) {
  let h = 0x811c9dc5;
  for (const b of bytes) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0; // 32-bit multiply: a double would lose bits
  }
  return h >>> 0;
}

function partition(tenant, n) {
  return n > 1 ? fnv1a32(Buffer.from(tenant, 'ascii')) % n : 0;
}

class Publisher {
  constructor(bus, prefix = 'invalidate') {
    this.bus = bus;
    this.prefix = prefix;
  }

  async partitions() {
    const raw = await this.bus.get(`${this.prefix}:ingress:partitions`);
    if (raw === null) return 8; // the default while no router has written it
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 1 || n > 1024) {
      throw new Error(`${this.prefix}:ingress:partitions holds ${raw}, not a partition count`);
    }
    return n;
  }

  // Publishes one event and returns its id. Name keys, or say wholeTag.
  async publish({ tenant, domain, keys, wholeTag = false, entity, origin }) {
    if (wholeTag === Boolean(keys && keys.length)) {
      throw new Error('give keys, or wholeTag without keys (an empty key list is refused)');
    }
    const event = { id: crypto.randomBytes(14).toString('hex'), tenant, domain, ts: Date.now() };
    if (keys) event.keys = keys;
    if (entity) event.entity = entity;
    if (entity && wholeTag) event.whole_tag = true; // else an entity alone is entity-level (protocol.md, 2.3)
    if (origin) event.origin = origin;
    const stream = `${this.prefix}:ingress:{${partition(tenant, await this.partitions())}}`; // literal braces
    await this.bus.xadd(stream, '*', 'event', JSON.stringify(event));
    return event.id;
  }
}

// --- Caching under tags (protocol.md, section 3) ----------------------------

class TaggedCache {
  constructor(cacheRedis) {
    this.redis = cacheRedis;
    // No numberOfKeys: the count is passed per call. ioredis runs EVALSHA and
    // falls back to EVAL on NOSCRIPT.
    cacheRedis.defineCommand('setTagged', { lua: fs.readFileSync(SET_LUA, 'utf8') });
    cacheRedis.defineCommand('takeLease', { lua: fs.readFileSync(path.join(LUA_DIR, 'lease.lua'), 'utf8') });
    cacheRedis.defineCommand('releaseLease', { lua: fs.readFileSync(path.join(LUA_DIR, 'release.lua'), 'utf8') });
    this.values = new Map(); // `${tenant}\n${key}` -> value
    this.tags = new Map();   // `${tenant}\n${tag}` -> Set of keys
  }

  // Records the tenant in the cache Redis's tenant index before each tagged
  // value (protocol.md, section 3): a subscriber of every tenant finds there
  // the tenants whose tags it must invalidate when the bus has lost its
  // data. A command of its own, as the set lives in no tenant's slot; sent
  // every time, not remembered, so that a cache Redis that lost its data has
  // it back with the next value.
  async indexTenant(tenant) {
    await this.redis.sadd('routerd:tenants', tenant);
  }

  static fullName(tenant, key) {
    return `{tenant:${tenant}}:${key}`;
  }

  async put(tenant, key, value, tags, ttlMs = 0) {
    const full = TaggedCache.fullName(tenant, key);
    // The value, its lease (set.lua deletes it: a fill in flight of older
    // data is void), then its tag sets.
    const keys = [full, `{tenant:${tenant}}:lease:${full}`, ...tags.map((t) => `{tenant:${tenant}}:tag:${t}`)];
    await this.indexTenant(tenant);
    await this.redis.setTagged(keys.length, ...keys, value, ttlMs);
    this.values.set(`${tenant}\n${key}`, value);
    for (const t of tags) {
      const id = `${tenant}\n${t}`;
      if (!this.tags.has(id)) this.tags.set(id, new Set());
      this.tags.get(id).add(key);
    }
  }

  // Reads through the cache Redis under a lease (protocol.md, 3.2): a hit is
  // one GET; on a miss only the lease holder calls load(), the others wait
  // for its value, and what load() returned is cached only if no
  // invalidation of the key came in the meantime (it is returned either way).
  async fetch(tenant, key, tags, load, { ttlMs = 0, leaseMs = 5000, waitLimitMs = 10000 } = {}) {
    const full = TaggedCache.fullName(tenant, key);
    const hit = await this.redis.get(full);
    if (hit !== null) return hit;
    const lease = `{tenant:${tenant}}:lease:${full}`;
    const sets = tags.map((t) => `{tenant:${tenant}}:tag:${t}`);
    await this.indexTenant(tenant);
    const token = crypto.randomBytes(16).toString('hex');
    const deadline = Date.now() + waitLimitMs;
    let pause = 2;
    for (;;) {
      const keys = [full, lease, ...sets];
      const reply = await this.redis.takeLease(keys.length, ...keys, token, leaseMs);
      if (reply[0] === 'HIT') return reply[1];
      if (reply[0] === 'LEASED') break;
      const left = deadline - Date.now(); // WAIT: another fill holds it
      if (left <= 0) throw new Error(`${full}: another fill held the lease for ${waitLimitMs}ms`);
      await new Promise((r) => setTimeout(r, Math.min(pause, left, reply[1] + 1)));
      pause = Math.min(2 * pause, 50);
    }
    let value;
    try {
      value = await load();
    } catch (e) {
      await this.redis.releaseLease(2 + sets.length, lease, full, ...sets, token); // the next miss need not wait
      throw e;
    }
    // The value's sets, then those lease.lua added the key to (the same
    // here): -1 when an invalidation took the key out of one, not cached.
    const keys = [full, lease, ...sets, ...sets];
    await this.redis.setTagged(keys.length, ...keys, value, ttlMs, 0, token, sets.length);
    return value;
  }

  get(tenant, key) {
    return this.values.get(`${tenant}\n${key}`);
  }

  dropKeys(tenant, tag, keys) {
    for (const k of keys) {
      this.values.delete(`${tenant}\n${k}`);
      for (const members of this.tags.values()) members.delete(k);
    }
  }

  dropTag(tenant, tag) {
    const id = `${tenant}\n${tag}`;
    for (const k of this.tags.get(id) || []) this.values.delete(`${tenant}\n${k}`);
    this.tags.delete(id);
  }

  reset() {
    this.values.clear();
    this.tags.clear();
  }
}

// --- Receiving from the agent (protocol.md, section 5.1) --------------------

class Receiver {
  constructor(cache) {
    this.cache = cache;
    this.received = []; // every delivery, in order
    this.waiters = [];
    this.server = http.createServer((req, res) => {
      if (req.method !== 'POST') {
        res.writeHead(405).end();
        return;
      }
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        try {
          this.apply(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch (e) {
          res.writeHead(400).end(`bad invalidation: ${e.message}\n`); // not 2xx: the agent retries it
          return;
        }
        res.writeHead(204).end(); // 2xx only once the keys are gone
      });
    });
  }

  listen(addr) {
    const i = addr.lastIndexOf(':');
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(Number(addr.slice(i + 1)), addr.slice(0, i), resolve);
    });
  }

  apply(inv) {
    if (inv.reset) {
      this.cache.reset();
    } else if (inv.whole_tag || inv.plain) {
      // put registers plain values only (no reference index here): an
      // entity-level delivery ("plain") drops them all, as a whole tag.
      this.cache.dropTag(inv.tenant, inv.tag);
    } else if (Array.isArray(inv.keys)) {
      // Refs beside keys name values cached by reference: none here.
      this.cache.dropKeys(inv.tenant, inv.tag, inv.keys);
    } else if (!Array.isArray(inv.refs) || inv.refs.length === 0) {
      throw new Error('neither reset, whole_tag, keys nor refs');
    }
    this.received.push(inv);
    for (const w of this.waiters.splice(0)) w();
  }

  // Waits for the delivery of the invalidation of one event.
  async waitEvent(eventId, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const inv = this.received.find((r) => r.event === eventId);
      if (inv) return inv;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`no invalidation for event ${eventId} within ${timeoutMs / 1000}s; received: ${JSON.stringify(this.received)}`);
      }
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
  }

  close() {
    const closed = new Promise((resolve) => this.server.close(resolve));
    this.server.closeAllConnections(); // the agent keeps its connection alive
    return closed;
  }
}

// Checks fnv1a32 and partition against the test vectors of protocol.md.
function checkVectors(docPath) {
  const text = fs.readFileSync(docPath, 'utf8');
  const block = text.split('<!-- fnv-vectors:begin -->')[1].split('<!-- fnv-vectors:end -->')[0];
  const rows = block.trim().split('\n').map((line) => line.trim().replace(/^\||\|$/g, '').split('|').map((c) => c.trim().replace(/`/g, '')));
  const ns = rows[0].slice(2).map((h) => Number(h.split('=')[1])); // "p, N = 8"
  let bad = 0;
  for (const row of rows.slice(2)) {
    const [tenant, hash, ...parts] = row;
    const got = fnv1a32(Buffer.from(tenant, 'ascii'));
    if (got !== parseInt(hash, 16)) {
      console.log(`FAIL: FNV-1a-32(${tenant}) = 0x${got.toString(16)}, the doc says ${hash}`);
      bad++;
    }
    ns.forEach((n, i) => {
      if (partition(tenant, n) !== Number(parts[i])) {
        console.log(`FAIL: partition(${tenant}, ${n}) = ${partition(tenant, n)}, the doc says ${parts[i]}`);
        bad++;
      }
    });
  }
  if (bad) return 1;
  console.log(`OK: ${rows.length - 2} partition vectors of ${docPath}`);
  return 0;
}

// Polls a /readyz until it answers 200.
async function waitReady(url, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const resp = await fetch(url, { signal: AbortSignal.timeout(1000) });
      if (resp.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${url} not ready within ${timeoutMs / 1000}s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function main() {
  const { values: a } = parseArgs({
    options: {
      redis: { type: 'string', default: process.env.ROUTERD_REDIS_URL || 'redis://127.0.0.1:6390' },
      'cache-redis': { type: 'string', default: process.env.ROUTERD_CACHE_REDIS_URL || '' },
      listen: { type: 'string', default: '127.0.0.1:8767' },
      tenant: { type: 'string', default: 'acme' },
      domain: { type: 'string', default: 'user' },
      tag: { type: 'string', default: 'active' },
      timeout: { type: 'string', default: '30' },
      // the agent's /readyz: wait for it (the agent is ready once its reset,
      // if any, is delivered here) before publishing
      'agent-ready': { type: 'string' },
      'check-vectors': { type: 'string' }, // only check the partition function against protocol.md's vectors
    },
  });
  if (a['check-vectors']) return checkVectors(a['check-vectors']);
  const timeoutMs = Number(a.timeout) * 1000;
  const bus = new Redis(a.redis);
  const cacheRedis = new Redis(a['cache-redis'] || a.redis);
  const cache = new TaggedCache(cacheRedis);
  const pub = new Publisher(bus);
  const recv = new Receiver(cache);
  await recv.listen(a.listen);
  const t = a.tenant;
  const run = crypto.randomBytes(4).toString('hex');
  try {
    if (a['agent-ready']) await waitReady(a['agent-ready'], timeoutMs);
    // Deliveries come in order, and a reset (if the agent sends one) comes
    // first: once a probe event is delivered, nothing earlier can still drop
    // what is cached next.
    const probe = await pub.publish({ tenant: t, domain: a.domain, keys: [`probe:${run}`], origin: 'node-example' });
    await recv.waitEvent(probe, timeoutMs);
    const n = await pub.partitions();
    console.log(`receiver at ${a.listen}: the agent delivers (partition ${partition(t, n)} of ${n} for ${t})`);

    const one = `user:${run}:1042`, two = `user:${run}:7`, other = `product:${run}:9`;
    await cache.put(t, one, 'Ada', [a.tag], 600000);
    await cache.put(t, two, 'Grace', [a.tag], 600000);
    await cache.put(t, other, 'Lamp', ['not-routed'], 600000);
    check(await cacheRedis.sismember('routerd:tenants', t) === 1, `${t} is in the cache Redis's tenant index routerd:tenants`);
    console.log(`cached ${one}, ${two} under ${a.tag} and ${other} under not-routed (SADD routerd:tenants ${t}, set.lua)`);

    let ev = await pub.publish({ tenant: t, domain: a.domain, keys: [one], entity: '1042', origin: 'node-example' });
    let inv = await recv.waitEvent(ev, timeoutMs);
    check(inv.tenant === t && inv.tag === a.tag && JSON.stringify(inv.keys) === JSON.stringify([one]),
      `the delivery names tenant, tag and key: ${JSON.stringify(inv)}`);
    check(Number.isInteger(inv.version) && inv.version >= 1 && inv.epoch, `the delivery has a version and an epoch: ${JSON.stringify(inv)}`);
    check(cache.get(t, one) === undefined, `${one} left the in-process cache`);
    check(cache.get(t, two) === 'Grace', `${two}, not named, stayed in the in-process cache`);
    check(await cacheRedis.exists(TaggedCache.fullName(t, one)) === 0, `the agent deleted ${TaggedCache.fullName(t, one)} from the cache Redis`);
    check(await cacheRedis.exists(TaggedCache.fullName(t, two)) === 1, `${TaggedCache.fullName(t, two)} stayed in the cache Redis`);
    console.log(`published ${ev} naming ${one}: delivered as version ${inv.version}; ${one} dropped, ${two} kept`);

    ev = await pub.publish({ tenant: t, domain: a.domain, wholeTag: true, origin: 'node-example' });
    inv = await recv.waitEvent(ev, timeoutMs);
    check(inv.whole_tag === true && !('keys' in inv), `a whole-tag delivery: ${JSON.stringify(inv)}`);
    check(cache.get(t, two) === undefined, `${two} left the in-process cache with its tag`);
    check(cache.get(t, other) === 'Lamp', `${other}, under another tag, stayed`);
    check(await cacheRedis.exists(TaggedCache.fullName(t, two)) === 0, `the agent deleted ${TaggedCache.fullName(t, two)} from the cache Redis`);
    console.log(`published ${ev} for the whole tag ${a.tag}: delivered as version ${inv.version}; ${two} dropped, ${other} kept`);

    // Read through a lease, and race it: the load reads "old", then the row
    // changes and its invalidation is applied before the load returns.
    const racy = `user:${run}:99`;
    const loadOld = async () => {
      const id = await pub.publish({ tenant: t, domain: a.domain, keys: [racy], origin: 'node-example' });
      await recv.waitEvent(id, timeoutMs); // the agent took the key out of its tag
      return 'old';
    };
    check(await cache.fetch(t, racy, [a.tag], loadOld, { ttlMs: 600000 }) === 'old', 'fetch returns what it loaded');
    check(await cacheRedis.exists(TaggedCache.fullName(t, racy)) === 0, `a value loaded before the invalidation of ${racy} was not cached after it`);
    check(await cache.fetch(t, racy, [a.tag], async () => 'new', { ttlMs: 600000 }) === 'new', 'the next fetch loads again');
    check(await cache.fetch(t, racy, [a.tag], async () => 'unused', { ttlMs: 600000 }) === 'new', 'then it is a hit');
    check(await cacheRedis.sismember(`{tenant:${t}}:tag:${a.tag}`, TaggedCache.fullName(t, racy)) === 1, `${racy} is registered under ${a.tag}`);
    console.log(`fetched ${racy} under a lease: the value loaded during its invalidation was not cached, the next one was`);
    console.log('OK: node example: cached under tags, published by XADD, invalidated through the agent');
    return 0;
  } catch (e) {
    console.error(`FAIL: ${e.message}`);
    return 1;
  } finally {
    await recv.close();
    bus.disconnect();
    cacheRedis.disconnect();
  }
}

if (require.main === module) {
  main().then((code) => { process.exitCode = code; }, (e) => { console.error(`FAIL: ${e.stack || e}`); process.exitCode = 1; });
}

module.exports = { fnv1a32, partition, Publisher, TaggedCache, Receiver };
