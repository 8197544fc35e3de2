#!/usr/bin/env python3
"""AMQP conformance through an asyncio client (aio-pika over aiormq and pamqp, Python).

Usage: test_aio_pika.py AMQP_URL [NAME_PREFIX]

aio-pika has a frame codec of its own (pamqp) and uses publisher confirms by default;
this drives it as asyncio services do: a topic exchange with a dead-letter exchange,
confirmed and returned publishes, a prefetch-bounded consumer acking and rejecting,
basic.get, a transaction, a refused redeclaration that closes only its channel, and the
RPC pattern over an exclusive reply queue. Run by tests/tests/amqp_conformance.rs
against both RabbitMQ and the embedded broker; exits non-zero with a message on the
first mismatch. Every wait is bounded.
"""
import asyncio
import sys
import time

import aio_pika
import aiormq

STEP = 5.0


def check(cond, what):
    if not cond:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


async def bounded(awaitable, what):
    try:
        return await asyncio.wait_for(awaitable, STEP)
    except asyncio.TimeoutError:
        check(False, f"{what}: no answer within {STEP} s")


async def main(url, prefix):
    conn = await bounded(aio_pika.connect(url, timeout=STEP), "connect")
    # Returned messages raise DeliveryError on the publish that sent them.
    ch = await bounded(conn.channel(publisher_confirms=True, on_return_raises=True), "channel")

    # A topic exchange; a queue dead-lettering rejected messages to a fanout exchange.
    x = await bounded(ch.declare_exchange(f"{prefix}.x", aio_pika.ExchangeType.TOPIC),
                      "exchange.declare")
    dlx = await bounded(ch.declare_exchange(f"{prefix}.dlx", aio_pika.ExchangeType.FANOUT),
                        "exchange.declare dlx")
    dead = await bounded(ch.declare_queue(f"{prefix}.dead"), "queue.declare dead")
    await bounded(dead.bind(dlx), "queue.bind dead")
    q = await bounded(ch.declare_queue(f"{prefix}.q", arguments={
        "x-dead-letter-exchange": f"{prefix}.dlx",
        "x-message-ttl": 60000,
    }), "queue.declare")
    await bounded(q.bind(x, routing_key="orders.*"), "queue.bind")

    # Confirmed publishes: each await returns the broker's ack.
    for i in range(4):
        confirm = await bounded(x.publish(
            aio_pika.Message(f"m{i}".encode(), headers={"n": i},
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="orders.new"), f"publish {i}")
        check(isinstance(confirm, aiormq.spec.Basic.Ack), f"confirm of m{i}: {confirm!r}")

    # Mandatory and unroutable: the broker returns it (aio-pika raises DeliveryError).
    try:
        await bounded(x.publish(aio_pika.Message(b"lost"), routing_key="nobody",
                                mandatory=True), "mandatory publish")
        check(False, "an unroutable mandatory publish was not returned")
    except aio_pika.exceptions.DeliveryError as e:
        check(e.message is not None and e.message.body == b"lost", f"returned {e!r}")

    # basic.get: the first message, with its headers; acked.
    got = await bounded(q.get(timeout=STEP), "basic.get")
    check(got.body == b"m0" and got.headers.get("n") == 0, f"get {got.body!r} {got.headers}")
    await bounded(got.ack(), "ack")

    # A consumer with prefetch 1: acks m1, rejects m2 without requeue (dead-lettered with
    # x-death), requeues m3 once (redelivered) and acks it.
    await bounded(ch.set_qos(prefetch_count=1), "basic.qos")
    seen = []
    async with q.iterator() as messages:
        async for message in messages:
            seen.append((message.body, message.redelivered))
            if message.body == b"m2":
                await message.reject(requeue=False)
            elif message.body == b"m3" and not message.redelivered:
                await message.nack(requeue=True)
            else:
                await message.ack()
            if len(seen) == 4:
                break
    check(seen == [(b"m1", False), (b"m2", False), (b"m3", False), (b"m3", True)],
          f"consumed {seen}")
    dead_letter = await bounded(dead.get(timeout=STEP), "basic.get dead")
    death = (dead_letter.headers.get("x-death") or [{}])[0]
    check(dead_letter.body == b"m2" and death.get("reason") == "rejected"
          and death.get("queue") == f"{prefix}.q", f"dead letter {dead_letter.headers}")
    await bounded(dead_letter.ack(), "ack dead")

    # A transaction: published messages appear only at commit.
    tx_ch = await bounded(conn.channel(publisher_confirms=False), "tx channel")
    tq = await bounded(tx_ch.declare_queue(f"{prefix}.tx"), "queue.declare tx")
    tx = tx_ch.transaction()
    await bounded(tx.select(), "tx.select")
    await bounded(tx_ch.default_exchange.publish(aio_pika.Message(b"t"), routing_key=tq.name),
                  "publish in tx")
    declared = await bounded(tx_ch.declare_queue(tq.name, passive=True), "passive declare")
    check(declared.declaration_result.message_count == 0, "a message before commit")
    await bounded(tx.commit(), "tx.commit")
    declared = await bounded(tx_ch.declare_queue(tq.name, passive=True), "passive declare")
    check(declared.declaration_result.message_count == 1, "no message after commit")

    # Redeclaring with other arguments closes that channel with 406; the connection and
    # the other channels go on.
    bad = await bounded(conn.channel(), "channel for a refused declare")
    try:
        await bounded(bad.declare_queue(f"{prefix}.q", arguments={"x-message-ttl": 1}),
                      "inequivalent declare")
        check(False, "an inequivalent redeclaration was accepted")
    except aiormq.exceptions.ChannelPreconditionFailed as e:
        check("inequivalent arg 'x-message-ttl'" in str(e), f"refusal {e!r}")
    check(not conn.is_closed, "the connection closed with the channel")

    # RPC over an exclusive, server-named reply queue and a correlation id.
    server_q = await bounded(ch.declare_queue(f"{prefix}.rpc"), "queue.declare rpc")
    replies = await bounded(ch.declare_queue(exclusive=True), "queue.declare replies")
    check(replies.name.startswith("amq.gen-"), f"server-named queue {replies.name!r}")

    async def serve(message):
        async with message.process():
            await ch.default_exchange.publish(
                aio_pika.Message(message.body.upper(), correlation_id=message.correlation_id),
                routing_key=message.reply_to)

    await bounded(server_q.consume(serve), "basic.consume rpc")
    answer = asyncio.get_running_loop().create_future()

    async def on_reply(message):
        await message.ack()
        if not answer.done():
            answer.set_result((message.body, message.correlation_id))

    await bounded(replies.consume(on_reply), "basic.consume replies")
    await bounded(ch.default_exchange.publish(
        aio_pika.Message(b"ping", reply_to=replies.name, correlation_id="c-1"),
        routing_key=server_q.name), "publish request")
    got = await bounded(answer, "rpc reply")
    check(got == (b"PING", "c-1"), f"rpc reply {got}")

    for name in (f"{prefix}.q", f"{prefix}.dead", f"{prefix}.tx", f"{prefix}.rpc"):
        await bounded(ch.queue_delete(name), f"queue.delete {name}")
    for name in (f"{prefix}.x", f"{prefix}.dlx"):
        await bounded(ch.exchange_delete(name), f"exchange.delete {name}")
    await bounded(conn.close(), "connection.close")
    print("ok")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: test_aio_pika.py AMQP_URL [NAME_PREFIX]", file=sys.stderr)
        sys.exit(2)
    name_prefix = sys.argv[2] if len(sys.argv) > 2 else f"aiopika.{int(time.time() * 1000)}"
    asyncio.run(asyncio.wait_for(main(sys.argv[1], name_prefix), 60))
