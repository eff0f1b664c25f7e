#!/usr/bin/env python3
"""Drives one run through its whole life with pika, using nothing but docs/CONTRACT.md.

Usage: pika_drive.py AMQP_URL PREFIX RUN_ID
Exits 0 when every reply and event is as the contract says; prints what differed otherwise.
"""
import json
import sys
import time
import uuid

import pika

url, prefix, run_id = sys.argv[1], sys.argv[2], sys.argv[3]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()

# A subscriber declares its own queue and binds it to the events exchange.
events_q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
ch.queue_bind(events_q, f"{prefix}.events", routing_key=f"run.{run_id}.#")
replies_q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def send(body, command_id):
    corr = str(uuid.uuid4())
    ch.basic_publish(
        exchange=f"{prefix}.commands",
        routing_key=run_id,
        body=json.dumps(body).encode(),
        properties=pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=command_id,
            reply_to=replies_q, correlation_id=corr),
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        method, props, payload = ch.basic_get(replies_q, auto_ack=True)
        if method is None:
            time.sleep(0.02)
            continue
        check(props.correlation_id == corr, f"reply correlation_id {props.correlation_id} != {corr}")
        return json.loads(payload)
    failures.append(f"no reply to {command_id}")
    return {}


r = send({"command": "start", "run_id": run_id, "agent_id": "pika", "input": {"q": "2 + 2"}}, f"{run_id}-c1")
check(r.get("ok") is True and r["run"]["status"] == "running", f"start reply {r}")
r = send({"command": "require_action", "run_id": run_id,
          "action": {"id": "a-1", "type": "tool_call", "tool": "calculator", "args": {"expression": "2 + 2"}}},
         f"{run_id}-c2")
check(r.get("ok") is True and r["run"]["status"] == "waiting", f"require_action reply {r}")
check([a["id"] for a in r.get("run", {}).get("pending_actions", [])] == ["a-1"], f"pending actions {r}")
r = send({"command": "complete", "run_id": run_id}, f"{run_id}-c3")
check(r.get("ok") is False and r.get("error", {}).get("code") == "invalid_transition", f"early complete {r}")
r = send({"command": "complete_action", "run_id": run_id, "action_id": "a-1", "result": 4}, f"{run_id}-c4")
check(r.get("ok") is True and r["run"]["status"] == "running", f"complete_action reply {r}")
r = send({"command": "complete", "run_id": run_id, "result": {"answer": 4}}, f"{run_id}-c5")
check(r.get("ok") is True and r["run"]["status"] == "completed", f"complete reply {r}")
# The same command id again: answered with the first outcome, not applied twice.
r = send({"command": "complete", "run_id": run_id, "result": {"answer": 4}}, f"{run_id}-c5")
check(r.get("ok") is True and r["run"]["version"] == 5, f"duplicate complete reply {r}")

expected = ["created", "started", "action_required", "action_completed", "completed"]
seen = []
deadline = time.time() + 20
while time.time() < deadline and len([e for e in seen if e[1]["type"] != "command_rejected"]) < len(expected):
    method, props, payload = ch.basic_get(events_q, auto_ack=True)
    if method is None:
        time.sleep(0.02)
        continue
    seen.append((method, json.loads(payload), props))

state_events = [(m, e, p) for (m, e, p) in seen if e["type"] != "command_rejected"]
rejections = [(m, e, p) for (m, e, p) in seen if e["type"] == "command_rejected"]
check([e["type"] for _, e, _ in state_events] == expected, f"event types {[e['type'] for _, e, _ in state_events]}")
for i, (m, e, p) in enumerate(state_events, start=1):
    check(e["seq"] == i and e["version"] == i, f"seq/version of {e}")
    check(m.routing_key == f"run.{run_id}.{e['type']}", f"routing key {m.routing_key}")
    check(p.message_id == f"{run_id}:{i}" and e["event_id"] == f"{run_id}:{i}", f"message id {p.message_id}")
    check(p.delivery_mode == 2, "events are persistent")
    h = p.headers or {}
    check(h.get("run_id") == run_id and h.get("seq") == i and h.get("type") == e["type"]
          and h.get("status") == e["status"], f"headers {h}")
    check(e["occurred_at"].endswith("Z") and len(e["occurred_at"]) == 24, f"occurred_at {e['occurred_at']}")
check(state_events and state_events[-1][1].get("stop_reason") == "completed", "terminal event stop_reason")
check(state_events and state_events[2][1]["action"]["tool"] == "calculator", "action_required carries the action")
check(len(rejections) >= 1 and rejections[0][1]["error"]["code"] == "invalid_transition"
      and rejections[0][1]["after_seq"] == 3, f"command_rejected {[e for _, e, _ in rejections]}")

conn.close()
if failures:
    print("FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("pika interop: ok")
