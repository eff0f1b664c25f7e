#!/usr/bin/env python3
"""The agent of docs/examples/swift-agent/main.swift written with pika, for comparison: starts a
run, asks for a tool call, performs it, completes the action and the run, prints the events.
Usage: pika_agent.py [run-id]   (RUNWORKER_AMQP_URL, RUNWORKER_PREFIX as for the worker)
It has what RunClient gives the Swift version, except reconnects: publisher confirms,
direct reply-to with correlation ids and a timeout, refusals raised with their code, and events
without repeats (by seq) with gaps reported."""
import json
import os
import sys
import time
import uuid

import pika

url = os.environ.get("RUNWORKER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
prefix = os.environ.get("RUNWORKER_PREFIX", "runs")
run_id = sys.argv[1] if len(sys.argv) > 1 else f"agent-{uuid.uuid4().hex[:8]}"

conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.confirm_delivery()
# Subscribe before starting, so that no event is missed.
ch.exchange_declare(f"{prefix}.events", "topic", durable=True)
events_q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
ch.queue_bind(events_q, f"{prefix}.events", routing_key=f"run.{run_id}.#")
replies = {}
last_seq = {}
finished = False


def on_reply(_ch, _method, props, body):
    replies[props.correlation_id] = json.loads(body)


def on_event(_ch, _method, _props, body):
    global finished
    e = json.loads(body)
    if e.get("type") == "command_rejected":
        print(f"  rejected: {e['error']['code']}: {e['error']['message']}")
        return
    seen = last_seq.get(e["run_id"])
    if seen is not None and e["seq"] <= seen:
        return  # a repeat
    if seen is not None and e["seq"] > seen + 1:
        print(f"  gap: events #{seen + 1}..#{e['seq'] - 1} missed")
    last_seq[e["run_id"]] = e["seq"]
    print(f"event #{e['seq']} {e['type']}: {e['status']}")
    finished = finished or e["status"] in ("completed", "failed", "cancelled")


ch.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
ch.basic_consume(events_q, on_event, auto_ack=True)


class Refused(Exception):
    pass


def send(command, timeout=15):
    command["run_id"] = run_id
    corr = str(uuid.uuid4())
    ch.basic_publish(f"{prefix}.commands", run_id, json.dumps(command).encode(), mandatory=True,
                     properties=pika.BasicProperties(
                         content_type="application/json", delivery_mode=2, message_id=str(uuid.uuid4()),
                         reply_to="amq.rabbitmq.reply-to", correlation_id=corr))
    deadline = time.time() + timeout
    while corr not in replies:
        if time.time() > deadline:
            raise TimeoutError(f"no reply to {command['command']}")
        conn.process_data_events(time_limit=0.1)
    reply = replies.pop(corr)
    if not reply["ok"]:
        raise Refused(f"{reply['error']['code']}: {reply['error']['message']}")
    return reply["run"]


send({"command": "start", "agent_id": "calculator", "input": {"question": "2 + 2"}})
run = send({"command": "require_action", "action": {"type": "tool_call", "tool": "add", "args": {"a": 2, "b": 2}}})
action = run["pending_actions"][0]
total = action["args"]["a"] + action["args"]["b"]
send({"command": "complete_action", "action_id": action["id"], "result": total})
done = send({"command": "complete", "result": {"answer": total}})
deadline = time.time() + 15
while not finished and time.time() < deadline:
    conn.process_data_events(time_limit=0.1)
conn.close()
print(f"{run_id} {done['status']}, answer {total}")
