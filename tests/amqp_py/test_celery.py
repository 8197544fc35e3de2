#!/usr/bin/env python3
"""AMQP conformance through Celery 5 (kombu and py-amqp), a worker and a client.

Usage: test_celery.py AMQP_URL NAME_PREFIX

Run by tests/tests/amqp_conformance.rs against both RabbitMQ and the embedded broker.
The script is also the worker's app module: it starts `celery -A test_celery worker` on
itself as a subprocess, passing the URL and prefix through the environment, then drives
that worker as a client. Every queue and the worker's node name derive from NAME_PREFIX,
so runs against a shared broker never collide. Exits non-zero (with a message and the
worker's log) on the first mismatch. Every wait is bounded; the worker is always stopped.
"""
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time

from celery import Celery, group
from celery.exceptions import TaskRevokedError
from celery.exceptions import TimeoutError as ResultTimeout
from celery.utils.nodenames import host_format
from kombu import Exchange, Queue

ENV_URL = "CELERY_CONFORMANCE_URL"
ENV_PREFIX = "CELERY_CONFORMANCE_PREFIX"

if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: test_celery.py AMQP_URL NAME_PREFIX", file=sys.stderr)
        sys.exit(2)
    # The worker imports this file as a module and reads its settings from here.
    os.environ[ENV_URL], os.environ[ENV_PREFIX] = sys.argv[1], sys.argv[2]

URL = os.environ.get(ENV_URL, "amqp://guest:guest@127.0.0.1:5672//")
PREFIX = os.environ.get(ENV_PREFIX, "celery-conformance")
DEFAULT_Q = f"{PREFIX}.celery"
PRIO_Q = f"{PREFIX}.prio"
QUORUM_Q = f"{PREFIX}.qq"
QUEUES = [DEFAULT_Q, PRIO_Q, QUORUM_Q]
# One direct exchange per run: the default exchange name would be shared by all runs.
EXCHANGE = Exchange(PREFIX, type="direct")

# The same module name in this process and in the worker, so both register one app.
app = Celery("test_celery", broker=URL, backend="rpc://")
app.conf.update(
    task_default_queue=DEFAULT_Q,
    task_default_exchange=PREFIX,
    task_default_routing_key=DEFAULT_Q,
    task_queues=[
        Queue(DEFAULT_Q, EXCHANGE, routing_key=DEFAULT_Q),
        Queue(PRIO_Q, EXCHANGE, routing_key=PRIO_Q, queue_arguments={"x-max-priority": 10}),
        Queue(QUORUM_Q, EXCHANGE, routing_key=QUORUM_Q,
              queue_arguments={"x-queue-type": "quorum"}),
    ],
    task_acks_late=True,
    worker_send_task_events=True,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"confirm_publish": True},
    # A broker that does not answer must fail the run, not stall it.
    broker_connection_timeout=5,
    broker_connection_max_retries=3,
)


@app.task(name="conformance.add")
def add(x, y):
    return x + y


@app.task(name="conformance.now")
def now():
    return time.time()


@app.task(bind=True, name="conformance.delivery")
def delivery(self):
    info = self.request.delivery_info or {}
    return {"routing_key": info.get("routing_key"), "priority": info.get("priority")}


@app.task(bind=True, name="conformance.flaky", max_retries=5)
def flaky(self, failures):
    if self.request.retries < failures:
        # countdown=0: the default retry delay is three minutes.
        raise self.retry(countdown=0)
    return self.request.retries


@app.task(name="conformance.fail")
def fail(message):
    raise ValueError(message)


RESULT_TIMEOUT = 10
# Well inside the harness's 40 s per scenario, so a worker that never comes up is reported
# with its log rather than cut off by the harness.
WORKER_READY = 20


def check(cond, what):
    if not cond:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)


def result(res, what):
    """The task's result, or a mismatch when none comes within RESULT_TIMEOUT."""
    try:
        return res.get(timeout=RESULT_TIMEOUT)
    except ResultTimeout:
        check(False, f"{what}: no result within {RESULT_TIMEOUT} s")


def die_with_parent(parent):
    """Runs in the worker between fork and exec: SIGKILL it when this script dies, so a
    killed test run leaves no worker behind reconnecting forever."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def start_worker(nodename, log):
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    # Importing this file must not leave a __pycache__ in the source tree.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    parent = os.getpid()
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "test_celery", "worker", "--pool=solo",
         "-Q", ",".join(QUEUES), "-n", nodename, "-l", "warning"],
        cwd=here, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=lambda: die_with_parent(parent),
    )


def stop_worker(worker):
    if worker.poll() is not None:
        return
    worker.send_signal(signal.SIGTERM)  # warm shutdown
    try:
        worker.wait(timeout=10)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=5)


def wait_ready(worker, nodename):
    """Polls the worker with a ping until it answers; its control consumer starts after
    its task queues are declared and consumed."""
    deadline = time.monotonic() + WORKER_READY
    while time.monotonic() < deadline:
        check(worker.poll() is None, f"worker exited with {worker.returncode} during start-up")
        if app.control.ping(destination=[nodename], timeout=1):
            return
    check(False, f"worker {nodename} did not answer a ping within {WORKER_READY} s")


def scenario(nodename):
    # A plain task and its result over the rpc:// backend.
    check(result(add.delay(2, 3), "add(2, 3)") == 5, "add(2, 3) != 5")

    # A group: twenty tasks, results in order.
    got = result(group(add.s(i, i) for i in range(20)).apply_async(), "group of 20 adds")
    check(got == [2 * i for i in range(20)], f"group of 20 adds returned {got}")

    # countdown and expires, waited for together: the worker holds an ETA task until it
    # is due; a task due after it expires is revoked when its time comes.
    sent = time.time()
    delayed = now.apply_async(countdown=1)
    expiring = add.apply_async((1, 1), expires=60)
    expired = add.apply_async((1, 2), countdown=2, expires=1)
    check(result(expiring, "add with expires=60") == 2, "add with expires=60 != 2")
    ran = result(delayed, "countdown=1")
    check(ran - sent >= 0.9, f"countdown=1 task ran {ran - sent:.3f} s after it was sent")
    try:
        got = expired.get(timeout=RESULT_TIMEOUT)
        check(False, f"task due after it expired ran and returned {got!r}")
    except TaskRevokedError:
        pass
    except ResultTimeout:
        check(False, f"task due after it expired: no revocation within {RESULT_TIMEOUT} s")
    check(expired.state == "REVOKED", f"expired task state {expired.state}")

    # Routed to the priority queue with a priority the worker sees.
    got = result(delivery.apply_async(queue=PRIO_Q, priority=7), "priority task")
    check(got == {"routing_key": PRIO_Q, "priority": 7}, f"priority task delivery info {got}")

    # Routed to the quorum queue.
    got = result(delivery.apply_async(queue=QUORUM_Q), "quorum queue task")
    check(got["routing_key"] == QUORUM_Q, f"quorum queue task delivery info {got}")

    # A bound task retrying twice, then returning its retry count.
    check(result(flaky.delay(2), "retrying task") == 2, "retrying task's retries != 2")

    # An exception in the task is raised again by get().
    try:
        got = fail.delay("boom").get(timeout=RESULT_TIMEOUT)
        check(False, f"failing task returned {got!r}")
    except ValueError as e:
        check(str(e) == "boom", f"failing task raised ValueError({e})")
    except ResultTimeout:
        check(False, f"failing task: no result within {RESULT_TIMEOUT} s")

    # Remote control over the pidbox fanout exchange and reply queue.
    replies = app.control.ping(destination=[nodename], timeout=2)
    check(replies == [{nodename: {"ok": "pong"}}], f"ping replies {replies}")
    active = app.control.inspect(destination=[nodename], timeout=2).active_queues()
    names = sorted(q["name"] for q in (active or {}).get(nodename, []))
    check(names == sorted(QUEUES), f"active_queues {active}")
    replies = app.control.rate_limit(add.name, "100/s", destination=[nodename], reply=True,
                                     timeout=2)
    check(replies == [{nodename: {"ok": "new rate limit set successfully"}}],
          f"rate_limit replies {replies}")
    check(result(add.delay(4, 5), "add after rate_limit") == 9, "add after rate_limit != 9")


def delete_queues():
    with app.connection_for_write() as conn:
        ch = conn.default_channel
        for q in QUEUES:
            ch.queue_delete(q)
        ch.exchange_delete(PREFIX)


def main():
    nodename = host_format(f"{PREFIX}@%h")
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as log:
        worker = start_worker(nodename, log)
        ok = False
        try:
            wait_ready(worker, nodename)
            ready = time.monotonic()
            scenario(nodename)
            ok = True
        finally:
            stop_worker(worker)
            log.seek(0)
            text = log.read()
            # A refused declare does not fail a task: Celery logs it and carries on without
            # the feature (e.g. "Native delayed delivery will not be available"), so the
            # worker's log is part of the verdict.
            if ok and "CRITICAL" in text:
                ok = False
                print("MISMATCH: the worker logged a CRITICAL error", file=sys.stderr)
            if not ok:
                print(f"--- worker {nodename} log ---\n{text}--- end of worker log ---",
                      file=sys.stderr)
    if not ok:
        sys.exit(1)
    delete_queues()
    print(f"celery conformance: ok (worker ready in {ready - started:.1f} s, "
          f"scenario {time.monotonic() - ready:.1f} s)")


if __name__ == "__main__":
    main()
