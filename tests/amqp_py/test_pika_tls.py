#!/usr/bin/env python3
"""amqps through another language's client and TLS stack (pika over Python's ssl).

Usage: test_pika_tls.py AMQPS_URL CA_FILE CLIENT_CERT CLIENT_KEY [NAME_PREFIX]

Run by tests/tests/amqp_conformance/tls.rs against both RabbitMQ and the embedded broker,
which serve a certificate CA_FILE signed and verify client certificates CA_FILE signed.
Exits non-zero (with a message) on the first mismatch. Every wait is bounded.
"""
import ssl
import sys
import time

import pika


def check(cond, what):
    if not cond:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


def params(url, context):
    p = pika.URLParameters(url)
    p.ssl_options = pika.SSLOptions(context) if context else None
    p.socket_timeout = 5
    p.stack_timeout = 10
    p.blocked_connection_timeout = 5
    p.connection_attempts = 1
    return p


def refused(url, context):
    """True when the connection fails, and within the timeouts."""
    start = time.monotonic()
    try:
        pika.BlockingConnection(params(url, context)).close()
    except (pika.exceptions.AMQPConnectionError, ssl.SSLError, OSError):
        return time.monotonic() - start < 15
    return False


def main():
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    url, ca, cert, key = sys.argv[1:5]
    prefix = sys.argv[5] if len(sys.argv) > 5 else f"pikatls.{int(time.time() * 1000)}"

    trusting = ssl.create_default_context(cafile=ca)
    conn = pika.BlockingConnection(params(url, trusting))
    ch = conn.channel()
    ch.confirm_delivery()
    q = f"{prefix}.q"
    ch.queue_declare(q, exclusive=True)
    # Sizes across TLS records (16 KiB) and AMQP frames (128 KiB).
    bodies = [bytes([i % 251]) * n for i, n in enumerate([0, 1, 1000, 16385, 200_000, 7])]
    for body in bodies:
        ch.basic_publish("", q, body, pika.BasicProperties(delivery_mode=1), mandatory=True)
    got = []
    deadline = time.monotonic() + 10
    while len(got) < len(bodies) and time.monotonic() < deadline:
        method, _props, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            time.sleep(0.01)
            continue
        got.append(body)
    check(got == bodies, f"bodies over TLS: {[len(b) for b in got]}")
    conn.close()

    # With the client certificate the CA signed.
    with_cert = ssl.create_default_context(cafile=ca)
    with_cert.load_cert_chain(cert, key)
    conn = pika.BlockingConnection(params(url, with_cert))
    ch = conn.channel()
    declared = ch.queue_declare("", exclusive=True)
    check(declared.method.queue.startswith("amq.gen-"), f"server-named queue: {declared.method}")
    conn.close()

    # A client that does not trust the broker's CA gives up in its handshake.
    check(refused(url, ssl.create_default_context()), "connected without trusting the CA")
    # A client speaking plain AMQP to the TLS port gets no AMQP back.
    plain = url.replace("amqps://", "amqp://", 1)
    check(refused(plain, None), "plain AMQP accepted on the TLS port")

    # And the broker still serves.
    conn = pika.BlockingConnection(params(url, trusting))
    check(conn.is_open, "connection after the refusals")
    conn.close()
    print("pika over TLS: all checks passed")


if __name__ == "__main__":
    main()
