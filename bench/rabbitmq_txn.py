#!/usr/bin/env python3
"""Consume -> produce pipeline against RabbitMQ, the peer for Strata's transactions.

Each step takes N messages from an input queue, publishes N transformed messages to an
output queue and acks the N inputs. In mode `txn` the channel is in AMQP tx mode and every
step ends in tx.commit (publishes and acks land together, or not at all); mode `plain` does
the same without transactions (no publisher confirms either) as the in-run baseline.
Durable queues and persistent messages, so it compares with a durable log.

  rabbitmq_txn.py --port 5672 --n 100 --messages 20000
prints one line per mode:
  mode=txn n=100 messages=20000 txns_per_s=... msgs_per_s=... commit_p50_ms=... commit_p99_ms=...
  mode=plain n=100 messages=20000 msgs_per_s=...
"""
import argparse
import collections
import os
import time

import pika

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def pct(sorted_vals, p):
    return sorted_vals[min(len(sorted_vals) - 1, int(p / 100 * len(sorted_vals)))]


def preload(ch, queue, count, size):
    # Batches of 1000 in transactions: commit returns once they are stored, so the timed
    # part starts with the whole input on the broker (and no confirm round trip each).
    ch.tx_select()
    for i in range(count):
        body = (b"%08d" % i + b"x" * size)[:size]
        ch.basic_publish("", queue, body, PERSISTENT)
        if i % 1000 == 999 or i == count - 1:
            ch.tx_commit()
    ch.close()


def wait_count(ch, queue, count):
    # Plain publishes are fire-and-forget: the run ends when the output queue holds them all.
    while ch.queue_declare(queue, passive=True).method.message_count < count:
        time.sleep(0.001)


def run(conn, mode, n, messages, size):
    tag = "%s-%d-%d" % (mode, os.getpid(), time.monotonic_ns())
    inq, outq = "strata-bench-in-" + tag, "strata-bench-out-" + tag
    ch = conn.channel()
    for q in (inq, outq):
        ch.queue_declare(q, durable=True)
    preload(conn.channel(), inq, messages, size)

    if mode == "txn":
        ch.tx_select()
    # Prefetch 2N: in tx mode acks free credit only at commit, so the next batch can be
    # delivered while this one commits, without letting more than N pile up unacked.
    ch.basic_qos(prefetch_count=2 * n)
    buf = collections.deque()
    ch.basic_consume(inq, lambda c, m, p, b: buf.append((m.delivery_tag, b)))

    commits = []
    done = 0
    start = time.perf_counter()
    while done < messages:
        want = min(n, messages - done)
        while len(buf) < want:
            conn.process_data_events(time_limit=None)
        for _ in range(want):
            dtag, body = buf.popleft()
            ch.basic_publish("", outq, body.upper(), PERSISTENT)  # the "transform"
        ch.basic_ack(dtag, multiple=True)  # acks this batch: deliveries come in order
        if mode == "txn":
            t = time.perf_counter()
            ch.tx_commit()
            commits.append(time.perf_counter() - t)
        done += want
    if mode == "plain":
        wait_count(ch, outq, messages)
    elapsed = time.perf_counter() - start

    # Sanity: everything moved, nothing left behind.
    assert ch.queue_declare(outq, passive=True).method.message_count == messages
    ch.close()
    ch = conn.channel()
    assert ch.queue_declare(inq, passive=True).method.message_count == 0
    for q in (inq, outq):
        ch.queue_delete(q)
    ch.close()

    line = "mode=%s n=%d messages=%d" % (mode, n, messages)
    if mode == "txn":
        commits.sort()
        line += " txns_per_s=%.1f msgs_per_s=%.1f commit_p50_ms=%.3f commit_p99_ms=%.3f" % (
            len(commits) / elapsed, messages / elapsed,
            pct(commits, 50) * 1e3, pct(commits, 99) * 1e3)
    else:
        line += " msgs_per_s=%.1f" % (messages / elapsed)
    print(line, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=5672)
    ap.add_argument("--n", type=int, default=100, help="messages per transaction")
    ap.add_argument("--messages", type=int, default=20000, help="messages moved per mode")
    ap.add_argument("--size", type=int, default=1024, help="message body bytes")
    ap.add_argument("--modes", default="txn,plain")
    a = ap.parse_args()
    params = pika.ConnectionParameters("127.0.0.1", a.port, heartbeat=0)
    with pika.BlockingConnection(params) as conn:
        for mode in a.modes.split(","):
            run(conn, mode, a.n, a.messages, a.size)


if __name__ == "__main__":
    main()
