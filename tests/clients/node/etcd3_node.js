// The Node `etcd3` client (on @grpc/grpc-js, Node's own HTTP/2 and TLS stack) against an
// etcd-compatible server. Prints one line per step (what the server answered, or the
// client's error class and message); the test compares the whole transcript with the
// expected one, so any difference fails it.
//
// Usage: node etcd3_node.js MODE HOST:PORT [PKI_DIR]
//   kv    KV put/get/range/delete, txn both ways, a watch's events, a lease's keys
//         and expiry by revoke, over cleartext
//   auth  users, a role with a prefix permission, auth enable; then as alice (password):
//         allowed and refused requests, a wrong password, and root disabling auth
//   tls   the kv flow over TLS with the client certificate CN=root, then (server with
//         --client-cert-auth) auth enabled and each certificate's CN as the user
'use strict';

const fs = require('fs');
const path = require('path');
const { Etcd3 } = require('etcd3');

const [mode, endpoint, pki] = process.argv.slice(2);
const tls = mode === 'tls';
const hosts = `${tls ? 'https' : 'http'}://${endpoint}`;

function client(options = {}) {
  const base = { hosts, dialTimeout: 10000 };
  if (tls) {
    const who = options.cert || 'root';
    base.credentials = {
      rootCertificate: fs.readFileSync(path.join(pki, 'ca.pem')),
      certChain: fs.readFileSync(path.join(pki, `${who}.pem`)),
      privateKey: fs.readFileSync(path.join(pki, `${who}.key`)),
    };
  }
  if (options.auth) base.auth = options.auth;
  return new Etcd3(base);
}

function say(line) {
  process.stdout.write(`${line}\n`);
}

// Runs a step: prints `what: <result>` or `what: <ErrorClass>: <message>`.
async function step(what, run) {
  try {
    const result = await run();
    say(`${what}: ${result === undefined ? 'ok' : JSON.stringify(result)}`);
  } catch (e) {
    say(`${what}: ${e.constructor.name}: ${e.message}`);
  }
}

async function kvFlow(c) {
  await step('put k1', () => c.put('node/k1').value('v1').then(() => undefined));
  await step('put k2', () => c.put('node/k2').value('v2').then(() => undefined));
  await step('get k1', () => c.get('node/k1').string());
  await step('prefix', () => c.getAll().prefix('node/').strings());
  await step('count', () => c.getAll().prefix('node/').count());
  await step('txn true', () =>
    c.if('node/k1', 'Value', '==', 'v1').then(c.put('node/t').value('yes'))
      .else(c.put('node/t').value('no')).commit().then((r) => r.succeeded));
  await step('txn false', () =>
    c.if('node/k1', 'Value', '==', 'nope').then(c.put('node/t').value('yes'))
      .else(c.put('node/t').value('no')).commit().then((r) => r.succeeded));
  await step('get t', () => c.get('node/t').string());
  await step('delete k2', () => c.delete().key('node/k2').then((r) => Number(r.deleted)));
  await step('get k2', () => c.get('node/k2').string());

  const watcher = await c.watch().prefix('node/w/').create();
  const events = [];
  const seen = new Promise((resolve) => {
    const note = (kind) => (kv) => {
      events.push(`${kind} ${kv.key.toString()}=${kv.value.toString()}`);
      if (events.length === 3) resolve();
    };
    watcher.on('put', note('put'));
    watcher.on('delete', note('delete'));
  });
  await c.put('node/w/a').value('1');
  await c.put('node/w/a').value('2');
  await c.delete().key('node/w/a');
  await seen;
  say(`watch: ${events.join(', ')}`);
  await watcher.cancel();

  const lease = c.lease(60, { autoKeepAlive: false });
  await step('lease put', () => lease.put('node/l').value('leased').then(() => undefined));
  const id = await lease.grant();
  await step('lease time to live', async () => {
    const r = await c.leaseClient.leaseTimeToLive({ ID: id, keys: true });
    const ttl = Number(r.TTL);
    return { granted: Number(r.grantedTTL), ttlInRange: ttl > 0 && ttl <= 60, keys: r.keys.map(String) };
  });
  await step('lease keep-alive once', () =>
    lease.keepaliveOnce().then((r) => Number(r.TTL)));
  await step('lease key', () => c.get('node/l').string());
  await step('lease revoke', () => lease.revoke().then(() => undefined));
  await step('lease key after revoke', () => c.get('node/l').string());
  await step('cleanup', () => c.delete().prefix('node/').then(() => undefined));
}

async function setUpUsers(c, withPasswords) {
  const password = (name) => (withPasswords ? `${name}pw` : `${name}-unused`);
  await step('user root', () => c.user('root').create(password('root')).then(() => undefined));
  await step('role root', () => c.role('root').create().then(() => undefined));
  await step('root has root', () => c.user('root').addRole('root').then(() => undefined));
  await step('user alice', () => c.user('alice').create(password('alice')).then(() => undefined));
  await step('user bob', () => c.user('bob').create(password('bob')).then(() => undefined));
  await step('role app', () => c.role('app').create().then(() => undefined));
  await step('app readwrite app/', () =>
    c.role('app').grant({ permission: 'Readwrite', range: c.range({ prefix: 'app/' }) })
      .then(() => undefined));
  await step('alice has app', () => c.user('alice').addRole('app').then(() => undefined));
  await step('user again', () => c.user('alice').create('x').then(() => undefined));
  await step('auth enable', () => c.auth.authEnable({}).then(() => undefined));
}

async function asAlice(alice) {
  await step('alice put app/1', () => alice.put('app/1').value('one').then(() => undefined));
  await step('alice get app/1', () => alice.get('app/1').string());
  await step('alice put other', () => alice.put('other').value('x').then(() => undefined));
  await step('alice get other', () => alice.get('other').string());
  await step('alice txn into other', () =>
    alice.if('app/1', 'Value', '==', 'one').then(alice.put('other').value('x'))
      .commit().then((r) => r.succeeded));
  await step('alice watch other', () => alice.watch().key('other').create().then(() => 'created'));
  await step('alice user list', () => alice.getUsers().then((users) => users.map((u) => u.name)));
}

async function main() {
  const c = client();
  if (mode === 'kv') {
    await kvFlow(c);
  } else if (mode === 'auth') {
    await setUpUsers(c, true);
    await step('anonymous get app/1', () => c.get('app/1').string());
    const alice = client({ auth: { username: 'alice', password: 'alicepw' } });
    await asAlice(alice);
    alice.close();
    const wrong = client({ auth: { username: 'alice', password: 'nope' } });
    await step('wrong password', () => wrong.get('app/1').string());
    wrong.close();
    const root = client({ auth: { username: 'root', password: 'rootpw' } });
    await step('root user list', () => root.getUsers().then((users) => users.map((u) => u.name).sort()));
    await step('auth disable', () => root.auth.authDisable({}).then(() => undefined));
    root.close();
    await step('anonymous get app/1', () => c.get('app/1').string());
  } else if (mode === 'tls') {
    await kvFlow(c);
    await setUpUsers(c, false);
    const alice = client({ cert: 'alice' });
    await asAlice(alice);
    alice.close();
    const bob = client({ cert: 'bob' });
    await step('bob get app/1', () => bob.get('app/1').string());
    bob.close();
    await step('root user list', () => c.getUsers().then((users) => users.map((u) => u.name).sort()));
    await step('auth disable', () => c.auth.authDisable({}).then(() => undefined));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  c.close();
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`FAIL: ${e.stack || e}\n`);
    process.exit(1);
  },
);
