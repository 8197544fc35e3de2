#!/usr/bin/env node
// AMQP conformance through another language's client (amqplib, Node.js).
//
// Usage: node test_amqplib.js AMQP_URL [NAME_PREFIX]
//
// Run by tests/tests/amqp_conformance.rs against both RabbitMQ and the embedded broker.
// Exits non-zero (with a message) on the first mismatch. Every wait is bounded.
'use strict';

const { isDeepStrictEqual: same, inspect } = require('util');
const amqp = require('amqplib');

const STEP_MS = 5000;
const QUIET_MS = 300;
const REPLY_TO = 'amq.rabbitmq.reply-to';
const show = v => inspect(v, { depth: 6, breakLength: Infinity });
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

function check(cond, what) {
  if (!cond) {
    console.error(`MISMATCH: ${what}`);
    process.exit(1);
  }
}

// Awaits `promise`, failing the run when it takes longer than `ms`.
function step(what, promise, ms = STEP_MS) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

// Collects a consumer's deliveries; next() waits (bounded) for the following one.
function inbox() {
  const items = [];
  const waiters = [];
  return {
    push: m => (waiters.length ? waiters.shift()(m) : items.push(m)),
    next: what => step(what, items.length ? Promise.resolve(items.shift()) : new Promise(r => waiters.push(r))),
    get size() { return items.length; },
  };
}

async function openChannel(conn, confirm = false) {
  const ch = await step('channel.open', confirm ? conn.createConfirmChannel() : conn.createChannel());
  // A channel closed by the server emits 'error' (and the pending operation rejects).
  ch.closedBy = new Promise(resolve => ch.once('error', resolve));
  return ch;
}

// `op` on a fresh channel must be refused with `code`, the server closing that channel.
async function refused(conn, what, code, op) {
  const ch = await openChannel(conn);
  const err = await step(what, op(ch).then(() => null, e => e));
  check(err !== null && err.code === code,
    `${what}: ${err ? `reply code ${err.code} (${err.message})` : 'succeeded'}; expected reply code ${code}`);
  const event = await step(`${what}: channel 'error' event`, ch.closedBy);
  check(event.code === code, `${what}: 'error' event code ${event.code}, expected ${code}`);
}

async function main() {
  if (process.argv.length < 3) {
    console.error('usage: node test_amqplib.js AMQP_URL [NAME_PREFIX]');
    process.exit(2);
  }
  const url = process.argv[2];
  const prefix = process.argv[3] || `amqplib.${Date.now()}`;
  const n = name => `${prefix}.${name}`;

  // Connection: server properties, capabilities and the tuned limits.
  const conn = await step('connect', amqp.connect(url, { timeout: STEP_MS }));
  conn.on('error', e => check(false, `connection error: ${e.message}`));
  const props = conn.connection.serverProperties;
  for (const key of ['product', 'version', 'platform', 'copyright', 'information', 'cluster_name']) {
    check(typeof props[key] === 'string', `server property ${key}: ${show(props)}`);
  }
  for (const cap of ['publisher_confirms', 'exchange_exchange_bindings', 'basic.nack', 'consumer_cancel_notify',
    'connection.blocked', 'consumer_priorities', 'authentication_failure_close', 'per_consumer_qos', 'direct_reply_to']) {
    check(props.capabilities[cap] === true, `capability ${cap}: ${show(props.capabilities)}`);
  }
  const { frameMax, channelMax, heartbeat } = conn.connection;
  check(frameMax === 131072 && channelMax === 2047 && heartbeat === 60,
    `tuned frameMax/channelMax/heartbeat ${frameMax}/${channelMax}/${heartbeat}`);

  const ch = await openChannel(conn);
  const pub = await openChannel(conn, true);
  const confirmed = () => step('waitForConfirms', pub.waitForConfirms());
  const get = (q, noAck = true) => step(`basic.get ${q}`, ch.get(q, { noAck }));
  const bodies = async q => {
    const out = [];
    for (let m = await get(q); m; m = await get(q)) out.push(m.content.toString());
    return out;
  };

  // Queues: declare-ok counts, server-named queues, refused declarations.
  const q = n('q');
  let ok = await step('assertQueue', ch.assertQueue(q, { exclusive: true }));
  check(same(ok, { queue: q, messageCount: 0, consumerCount: 0 }), `assertQueue ${show(ok)}`);
  ok = await step('assertQueue server-named', ch.assertQueue('', { exclusive: true }));
  check(ok.queue.startsWith('amq.gen-'), `server-named queue ${ok.queue}`);
  await refused(conn, 'checkQueue of a missing queue', 404, c => c.checkQueue(n('missing')));
  await refused(conn, 'assertQueue non-exclusive over exclusive', 405, c => c.assertQueue(q));
  await step('assertQueue non-durable', ch.assertQueue(n('ineq'), { durable: false }));
  await refused(conn, 'assertQueue durable over non-durable', 406, c => c.assertQueue(n('ineq'), { durable: true }));
  await step('deleteQueue', ch.deleteQueue(n('ineq')));
  ok = await step('checkQueue after channel errors', (await openChannel(conn)).checkQueue(q));
  check(same(ok, { queue: q, messageCount: 0, consumerCount: 0 }), `checkQueue ${show(ok)}`);
  await refused(conn, 'publish with another user-id', 406,
    c => (c.sendToQueue(q, Buffer.from('x'), { userId: 'not-guest' }), c.checkQueue(q)));

  // Queue arguments as amqplib encodes them (small integers as byte/short/int).
  const ql = n('maxlen');
  const largs = { exclusive: true, maxLength: 2, overflow: 'drop-head', messageTtl: 60000, expires: 600000 };
  await step('assertQueue with arguments', ch.assertQueue(ql, largs));
  await step('assertQueue same arguments again', ch.assertQueue(ql, largs));
  for (const b of ['l0', 'l1', 'l2']) pub.sendToQueue(ql, Buffer.from(b));
  await confirmed();
  check(same(await bodies(ql), ['l1', 'l2']), 'x-max-length 2 drop-head keeps the newest two');

  // Exchanges of each type, bindings, unbinding and exchange-to-exchange bindings.
  const x = { direct: n('direct'), fanout: n('fanout'), topic: n('topic'), headers: n('headers') };
  for (const [type, name] of Object.entries(x)) {
    const r = await step(`assertExchange ${type}`, ch.assertExchange(name, type, { durable: false }));
    check(r.exchange === name, `assertExchange ${type} answered ${show(r)}`);
  }
  const xq = n('xq');
  await step('assertQueue xq', ch.assertQueue(xq, { exclusive: true }));
  for (const [ex, key, args] of [[x.direct, 'd1'], [x.fanout, ''], [x.topic, 'a.*.c'], [x.topic, 'b.#'],
    [x.headers, '', { 'x-match': 'all', k: 1, s: 'v' }]]) {
    await step(`bindQueue ${ex} ${key}`, ch.bindQueue(xq, ex, key, args));
  }
  await step('bindExchange', ch.bindExchange(x.fanout, x.direct, 'e2e'));
  for (const [ex, key] of [[x.direct, 'd1'], [x.direct, 'd2'], [x.fanout, 'any'], [x.topic, 'a.b.c'],
    [x.topic, 'a.b'], [x.topic, 'b'], [x.topic, 'b.x.y'], [x.direct, 'e2e']]) {
    pub.publish(ex, key, Buffer.from(key));
  }
  // amqplib sends 1 as a byte, other clients as an int or long: RabbitMQ compares numbers.
  for (const [body, k, s] of [['h-all', 1, 'v'], ['h-some', 1, undefined], ['h-long', { '!': 'int64', value: 1 }, 'v'],
    ['h-int', { '!': 'int32', value: 1 }, 'v'], ['h-text', '1', 'v']]) {
    pub.publish(x.headers, '', Buffer.from(body), { headers: { k, s, extra: true } });
  }
  await confirmed();
  const routed = await bodies(xq);
  check(same(routed.slice(0, 6), ['d1', 'any', 'a.b.c', 'b', 'b.x.y', 'e2e']), `routing by exchange type ${routed}`);
  check(same(routed.slice(6), ['h-all', 'h-long', 'h-int']), `headers exchange matched ${routed.slice(6)}`);
  await step('unbindQueue', ch.unbindQueue(xq, x.direct, 'd1'));
  await step('unbindExchange', ch.unbindExchange(x.fanout, x.direct, 'e2e'));
  pub.publish(x.direct, 'd1', Buffer.from('unbound'));
  pub.publish(x.direct, 'e2e', Buffer.from('unbound'));
  await confirmed();
  check(same(await bodies(xq), []), 'published after unbind was still routed');

  // Every property round-trips exactly, headers with nested tables, arrays and typed values.
  const pq = n('props');
  await step('assertQueue props', ch.assertQueue(pq, { exclusive: true, maxPriority: 10 }));
  const headers = {
    str: 'text', byte: 7, short: 300, int: 70000, long: 2 ** 40, neg: -5, dbl: 1.5, yes: true, no: false,
    nothing: null, bytes: Buffer.from([0, 1, 255]), list: [1, 'two', [3, { four: 4 }], false],
    nested: { deep: { list: ['a', 'b'], n: -1 } },
    ts: { '!': 'timestamp', value: 1700000000 }, dec: { '!': 'decimal', value: { places: 2, digits: 12345 } },
    u8: { '!': 'unsignedbyte', value: 200 }, u16: { '!': 'unsignedshort', value: 65535 },
    u32: { '!': 'unsignedint', value: 4294967295 }, f32: { '!': 'float', value: 0.25 },
  };
  const none = { contentType: undefined, contentEncoding: undefined, headers: {}, deliveryMode: undefined,
    priority: undefined, correlationId: undefined, replyTo: undefined, expiration: undefined,
    messageId: undefined, timestamp: undefined, type: undefined, userId: undefined, appId: undefined, clusterId: undefined };
  const options = { contentType: 'application/json', contentEncoding: 'utf-8', deliveryMode: 2, priority: 5,
    correlationId: 'corr-1', replyTo: n('reply'), expiration: '60000', messageId: 'mid-1', timestamp: 1700000000,
    type: 'order.created', userId: 'guest', appId: 'amqplib-test' };
  const expected = { ...none, ...options, headers: { ...headers, u8: 200, u16: 65535, u32: 4294967295, f32: 0.25 } };
  pub.sendToQueue(pq, Buffer.from('{"p":1}'), { ...options, headers });
  pub.sendToQueue(pq, Buffer.from('plain'));
  await confirmed();
  const inProps = inbox();
  const { consumerTag } = await step('consume', ch.consume(pq, inProps.push, { noAck: true }));
  check(consumerTag.startsWith('amq.ctag-'), `server-generated consumer tag ${consumerTag}`);
  let m = await inProps.next('delivery with properties');
  check(m.content.toString() === '{"p":1}', `body ${m.content}`);
  check(same(m.properties, expected), `properties\n  sent ${show(expected)}\n  got  ${show(m.properties)}`);
  check(same({ ...m.fields, deliveryTag: 0 }, { consumerTag, deliveryTag: 0, redelivered: false, exchange: '', routingKey: pq }),
    `delivery fields ${show(m.fields)}`);
  m = await inProps.next('delivery without properties');
  check(same(m.properties, none), `plain message properties ${show(m.properties)}`);
  await step('cancel', ch.cancel(consumerTag));

  // Sender-selected distribution: CC and BCC also route, BCC is removed before delivery.
  const cc = [n('cc0'), n('cc1'), n('cc2')];
  for (const c of cc) await step('assertQueue cc', ch.assertQueue(c, { exclusive: true }));
  pub.sendToQueue(cc[0], Buffer.from('cc'), { CC: cc[1], BCC: [cc[2]], headers: { h: 1 } });
  await confirmed();
  for (const c of cc) {
    m = await get(c);
    check(m && same(m.properties.headers, { h: 1, CC: [cc[1]] }), `CC/BCC delivery to ${c}: ${m && show(m.properties)}`);
  }

  // Confirms: a callback per publish, waitForConfirms, and a mandatory publish to nowhere.
  const order = [];
  pub.on('return', r => order.push(r));
  let acks = 0;
  for (let i = 0; i < 20; i++) pub.sendToQueue(q, Buffer.from(`c${i}`), {}, err => { acks += err === null; });
  await confirmed();
  check(acks === 20, `confirm callbacks ${acks}/20`);
  pub.publish('', n('nowhere'), Buffer.from('lost'), { mandatory: true, messageId: 'r1' }, err => order.push(err));
  await confirmed();
  check(order.length === 2 && order[1] === null, `basic.return then basic.ack: ${show(order)}`);
  check(same(order[0].fields, { replyCode: 312, replyText: 'NO_ROUTE', exchange: '', routingKey: n('nowhere') }) &&
    order[0].content.toString() === 'lost' && order[0].properties.messageId === 'r1', `returned ${show(order[0])}`);
  ok = await step('purgeQueue', ch.purgeQueue(q));
  check(same(ok, { messageCount: 20 }), `purgeQueue ${show(ok)}`);

  // Dead-lettering; a dead message republished with its properties (amqplib re-encodes
  // x-death's count as a byte) and dead-lettered again counts on.
  const [work, dlq] = [n('work'), n('dlq')];
  await step('assertQueue dlq', ch.assertQueue(dlq, { exclusive: true }));
  await step('assertQueue work', ch.assertQueue(work, { exclusive: true, deadLetterExchange: '', deadLetterRoutingKey: dlq }));
  pub.sendToQueue(work, Buffer.from('job'), { headers: { h: 1 } });
  await confirmed();
  for (let round = 1; round <= 2; round++) {
    const job = await get(work, false);
    check(job && job.content.toString() === 'job', `job in ${work}, round ${round}`);
    ch.reject(job, false);
    let dead = false;
    for (let i = 0; i < 40 && !dead; i++) dead = (await get(dlq)) || (await sleep(50), false);
    check(dead, `rejected message dead-lettered, round ${round}`);
    const h = dead.properties.headers;
    const xd = h['x-death'];
    check(Array.isArray(xd) && xd.length === 1 && xd[0].time['!'] === 'timestamp' && same({ ...xd[0], time: 0 },
      { count: round, reason: 'rejected', queue: work, time: 0, exchange: '', 'routing-keys': [work] }),
    `x-death, round ${round}: ${show(xd)}`);
    check(h['x-first-death-queue'] === work && h['x-first-death-reason'] === 'rejected' &&
      h['x-first-death-exchange'] === '' && h.h === 1, `dead-letter headers ${show(h)}`);
    pub.sendToQueue(work, dead.content, dead.properties);
    await confirmed();
  }

  // Prefetch, manual ack/nack (allUpTo, requeue), reject and the redelivered flag.
  const cq = await openChannel(conn);
  await step('prefetch', cq.prefetch(3));
  for (let i = 0; i < 6; i++) pub.sendToQueue(q, Buffer.from(`p${i}`));
  await confirmed();
  const inQ = inbox();
  const consumer = await step('consume', cq.consume(q, inQ.push, { noAck: false }));
  const take = async (count, redelivered, want) => {
    const got = [];
    for (let i = 0; i < count; i++) got.push(await inQ.next(`delivery ${i} of ${count}`));
    await sleep(QUIET_MS);
    check(inQ.size === 0, `prefetch 3 exceeded: ${inQ.size} more`);
    const seen = got.map(d => [d.content.toString(), d.fields.redelivered]);
    check(same(seen, want.map(b => [b, redelivered])), `deliveries ${show(seen)}`);
    return got;
  };
  let got = await take(3, false, ['p0', 'p1', 'p2']);
  cq.nack(got[2], true, true);
  got = await take(3, true, ['p0', 'p1', 'p2']);
  cq.ack(got[2], true);
  got = await take(3, false, ['p3', 'p4', 'p5']);
  cq.nack(got[0], false, false);
  cq.ack(got[1]);
  cq.reject(got[2], true);
  cq.ack((await take(1, true, ['p5']))[0]);
  await step('cancel', cq.cancel(consumer.consumerTag));
  ok = await step('checkQueue', ch.checkQueue(q));
  check(ok.messageCount === 0 && ok.consumerCount === 0, `after acks ${show(ok)}`);

  // basic.get with and without acks, then get-empty.
  for (const b of ['g0', 'g1']) pub.sendToQueue(q, Buffer.from(b));
  await confirmed();
  const g0 = await get(q, false);
  check(g0 && g0.content.toString() === 'g0' && g0.fields.messageCount === 1 && g0.fields.redelivered === false,
    `get noAck=false ${g0 && show(g0.fields)}`);
  const g1 = await get(q, true);
  check(g1 && g1.content.toString() === 'g1' && g1.fields.messageCount === 0, `get noAck=true ${g1 && show(g1.fields)}`);
  check(await get(q) === false, 'get on an empty queue');
  ch.ack(g0);

  // A cancelled consumer gets nothing more; a deleted queue cancels its consumer (null).
  const inC = inbox();
  const c1 = await step('consume', ch.consume(q, inC.push, { noAck: true }));
  await step('cancel', ch.cancel(c1.consumerTag));
  pub.sendToQueue(q, Buffer.from('after-cancel'));
  await confirmed();
  await sleep(QUIET_MS);
  check(inC.size === 0, 'delivery after basic.cancel');
  await step('assertQueue', ch.assertQueue(n('gone'), { durable: false }));
  const inS = inbox();
  await step('consume', ch.consume(n('gone'), inS.push));
  await step('deleteQueue with a consumer', pub.deleteQueue(n('gone')));
  check(await inS.next('server-side basic.cancel') === null, 'consumer callback not called with null');

  // deleteQueue ifEmpty / ifUnused refused with 406, closing the channel.
  await refused(conn, 'deleteQueue ifEmpty of a non-empty queue', 406, c => c.deleteQueue(q, { ifEmpty: true }));
  await step('consume', ch.consume(ql, () => {}));
  await refused(conn, 'deleteQueue ifUnused with a consumer', 406, c => c.deleteQueue(ql, { ifUnused: true }));
  ok = await step('checkQueue', ch.checkQueue(q));
  check(ok.messageCount === 1, `queue kept after refused delete ${show(ok)}`);

  // A large body split over frames, at the default frame size and at the minimum (4096).
  const big = Buffer.alloc(300 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = i % 251;
  const small = await step('connect frameMax=4096', amqp.connect(`${url}?frameMax=4096`, { timeout: STEP_MS }));
  check(small.connection.frameMax === 4096, `negotiated frameMax ${small.connection.frameMax}`);
  const sch = await openChannel(small, true);
  const bq = n('big');
  await step('assertQueue big', sch.assertQueue(bq, { durable: false }));
  sch.sendToQueue(bq, big);
  pub.sendToQueue(bq, big);
  await step('big confirms', Promise.all([sch.waitForConfirms(), confirmed()]));
  for (const [who, c] of [['frameMax 4096', sch], ['frameMax 131072', ch]]) {
    const b = await step(`get big over ${who}`, c.get(bq, { noAck: true }));
    check(b && b.content.equals(big), `large body over ${who}: ${b && b.content.length} bytes`);
  }
  await step('deleteQueue big', sch.deleteQueue(bq));
  await step('close frameMax=4096 connection', small.close());

  // RPC over the direct reply-to pseudo-queue.
  const rpc = n('rpc');
  await step('assertQueue rpc', ch.assertQueue(rpc, { exclusive: true }));
  const asked = [];
  await step('consume rpc', ch.consume(rpc, req => {
    asked.push(req.properties.replyTo);
    ch.sendToQueue(req.properties.replyTo, Buffer.from(`re:${req.content}`), { correlationId: req.properties.correlationId });
    ch.ack(req);
  }));
  const client = await openChannel(conn);
  const inR = inbox();
  await step(`consume ${REPLY_TO}`, client.consume(REPLY_TO, inR.push, { noAck: true }));
  client.sendToQueue(rpc, Buffer.from('ping'), { replyTo: REPLY_TO, correlationId: 'rpc-1' });
  const reply = await inR.next('direct reply-to answer');
  check(asked.length === 1 && asked[0].startsWith(`${REPLY_TO}.`), `request's replyTo ${show(asked)}`);
  check(reply.content.toString() === 're:ping' && reply.properties.correlationId === 'rpc-1' &&
    reply.fields.exchange === '' && reply.fields.routingKey === asked[0], `reply ${show(reply)}`);
  await refused(conn, 'reply-to consumer with acks', 406, c => c.consume(REPLY_TO, () => {}, { noAck: false }));
  await refused(conn, 'reply-to publish without a reply-to consumer', 406,
    c => (c.sendToQueue(rpc, Buffer.from('x'), { replyTo: REPLY_TO }), c.checkQueue(rpc)));

  // A stream, read from its first offset, each delivery carrying its own; a consumer
  // without a prefetch is refused.
  const sq = n('stream');
  await step('assertQueue stream', ch.assertQueue(sq, { durable: true, arguments: { 'x-queue-type': 'stream' } }));
  for (const b of ['s0', 's1', 's2']) pub.sendToQueue(sq, Buffer.from(b));
  await confirmed();
  const sc = await openChannel(conn);
  await step('prefetch', sc.prefetch(10));
  const inSt = inbox();
  await step('consume stream', sc.consume(sq, inSt.push, { noAck: false, arguments: { 'x-stream-offset': 'first' } }));
  const read = [];
  for (let i = 0; i < 3; i++) {
    const d = await inSt.next(`stream delivery ${i}`);
    read.push([d.content.toString(), d.properties.headers['x-stream-offset']]);
    sc.ack(d);
  }
  check(same(read, [['s0', 0], ['s1', 1], ['s2', 2]]), `stream read ${show(read)}`);
  await refused(conn, 'stream consumer without a prefetch', 406, c => c.consume(sq, () => {}, { noAck: false }));
  await step('deleteQueue stream', ch.deleteQueue(sq));

  for (const name of Object.values(x)) await step('deleteExchange', ch.deleteExchange(name));
  ok = await step('deleteQueue', ch.deleteQueue(q));
  check(same(ok, { messageCount: 1 }), `deleteQueue ${show(ok)}`);
  const closed = new Promise(resolve => conn.once('close', resolve));
  await step('connection.close', conn.close());
  await step("connection 'close' event", closed);
  console.log('amqplib conformance: ok');
}

setTimeout(() => check(false, 'the whole run took longer than 20 s'), 20000).unref();
main().catch(e => check(false, e instanceof Error ? e.stack : show(e)));
