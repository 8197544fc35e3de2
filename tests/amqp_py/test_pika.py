#!/usr/bin/env python3
"""AMQP conformance through another language's client (pika, Python).

Usage: test_pika.py AMQP_URL [NAME_PREFIX]

Run by tests/tests/amqp_conformance.rs against both RabbitMQ and the embedded broker.
Exits non-zero (with a message) on the first mismatch. Every wait is bounded.
"""
import sys
import time

import pika


def check(cond, what):
    if not cond:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


def main():
    if len(sys.argv) < 2:
        print("usage: test_pika.py AMQP_URL [NAME_PREFIX]", file=sys.stderr)
        sys.exit(2)
    url = sys.argv[1]
    prefix = sys.argv[2] if len(sys.argv) > 2 else f"pika.{int(time.time() * 1000)}"

    params = pika.URLParameters(url)
    params.socket_timeout = 5
    params.blocked_connection_timeout = 5
    params.connection_attempts = 1
    conn = pika.BlockingConnection(params)
    caps = conn._impl.server_capabilities
    check(caps.get("publisher_confirms") is True, f"publisher_confirms capability: {caps}")
    check(caps.get("basic.nack") is True, f"basic.nack capability: {caps}")
    check(caps.get("consumer_cancel_notify") is True, f"consumer_cancel_notify capability: {caps}")
    ch = conn.channel()

    # Declare a queue; declare-ok reports counts.
    q = f"{prefix}.q"
    ok = ch.queue_declare(queue=q, auto_delete=False)
    check(ok.method.queue == q, f"declare-ok queue name {ok.method.queue!r}")
    check(ok.method.message_count == 0 and ok.method.consumer_count == 0,
          f"fresh queue counts {ok.method.message_count}/{ok.method.consumer_count}")

    # Publish with confirms.
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish(exchange="", routing_key=q, body=f"m{i}".encode(),
                         properties=pika.BasicProperties(content_type="text/plain",
                                                         headers={"n": i}),
                         mandatory=True)
    # Mandatory and unroutable: pika raises UnroutableError after the basic.return.
    try:
        ch.basic_publish(exchange="", routing_key=f"{q}.nobody", body=b"x", mandatory=True)
        check(False, "unroutable mandatory publish was not returned")
    except pika.exceptions.UnroutableError as e:
        check(len(e.messages) == 1 and e.messages[0].body == b"x", f"returned message {e.messages}")

    ok = ch.queue_declare(queue=q, passive=True)
    check(ok.method.message_count == 3, f"message_count after 3 confirmed publishes: {ok.method.message_count}")

    # basic_get.
    method, props, body = ch.basic_get(queue=q, auto_ack=False)
    check(method is not None, "basic_get returned nothing")
    check(body == b"m0", f"basic_get body {body!r}")
    check(method.message_count == 2, f"get-ok message_count {method.message_count}")
    check(props.content_type == "text/plain" and props.headers == {"n": 0}, f"properties {props}")
    ch.basic_ack(method.delivery_tag)

    # Consume + ack the other two.
    got = []
    for method, props, body in ch.consume(q, auto_ack=False, inactivity_timeout=5):
        check(method is not None, f"consume timed out after {got}")
        got.append(body)
        ch.basic_ack(method.delivery_tag)
        if len(got) == 2:
            break
    ch.cancel()
    check(got == [b"m1", b"m2"], f"consumed {got}")
    method, _, _ = ch.basic_get(queue=q, auto_ack=True)
    check(method is None, "queue should be empty after acks")

    # Topic exchange routing.
    x = f"{prefix}.topic"
    ch.exchange_declare(exchange=x, exchange_type="topic", auto_delete=True)
    tq = f"{prefix}.tq"
    ch.queue_declare(queue=tq)
    ch.queue_bind(queue=tq, exchange=x, routing_key="logs.*.error")
    ch.queue_bind(queue=tq, exchange=x, routing_key="audit.#")
    for key in ["logs.web.error", "logs.web.info", "audit", "audit.a.b", "logs.error"]:
        ch.basic_publish(exchange=x, routing_key=key, body=key.encode())
    bodies = []
    for _ in range(10):
        method, _, body = ch.basic_get(queue=tq, auto_ack=True)
        if method is None:
            break
        bodies.append(body.decode())
    check(bodies == ["logs.web.error", "audit", "audit.a.b"], f"topic routing delivered {bodies}")

    # A stream: read from an offset, each delivery carrying its own.
    sq = f"{prefix}.stream"
    ch.queue_declare(queue=sq, durable=True, arguments={"x-queue-type": "stream"})
    for i in range(3):
        ch.basic_publish(exchange="", routing_key=sq, body=f"s{i}".encode())
    sch = conn.channel()
    sch.basic_qos(prefetch_count=10)
    read = []
    for method, props, body in sch.consume(sq, auto_ack=False, inactivity_timeout=5,
                                           arguments={"x-stream-offset": 1}):
        check(method is not None, f"stream consume timed out after {read}")
        read.append((body, props.headers.get("x-stream-offset")))
        sch.basic_ack(method.delivery_tag)
        if len(read) == 2:
            break
    sch.cancel()
    check(read == [(b"s1", 1), (b"s2", 2)], f"stream read from offset 1: {read}")
    ch.queue_delete(queue=sq)

    # A channel error surfaces as ChannelClosedByBroker with RabbitMQ's code.
    ch2 = conn.channel()
    try:
        ch2.queue_declare(queue=f"{prefix}.missing", passive=True)
        check(False, "passive declare of a missing queue succeeded")
    except pika.exceptions.ChannelClosedByBroker as e:
        check(e.reply_code == 404, f"passive declare reply code {e.reply_code}")

    ch.queue_delete(queue=q)
    ch.queue_delete(queue=tq)
    ch.close()
    conn.close()
    check(conn.is_closed, "connection not closed")
    print("pika conformance: ok")


if __name__ == "__main__":
    main()
