#!/usr/bin/env python3
"""Drives one run through its whole life with pika, using nothing but docs/CONTRACT.md.

Usage: pika_drive.py AMQP_URL PREFIX RUN_ID
Exits 0 when every reply and event is as the contract says; prints what differed otherwise.

Every command it sends, and every reply and event it receives (body and AMQP headers), is also
validated with Python jsonschema, a third-party validator, against the machine-readable
contract in docs/schemas (command.json, event.json, reply.json, headers.json).
"""
import json
import sys
import time
import uuid
from pathlib import Path

import pika

# docs/schemas as validators (scripts/contract_schemas.py registers every schema by its $id).
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
import contract_schemas  # noqa: E402

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


validated = {"command": 0, "reply": 0, "event": 0}


def conforms(kind, what, instance, headers=None, headers_def=None):
    """Validates a body against docs/schemas/<kind>.json and its AMQP headers against
    headers.json#/$defs/<headers_def>; every violation is a failure."""
    validated[kind] += 1
    for line in contract_schemas.errors(kind, instance):
        failures.append(f"{what} does not match docs/schemas/{kind}.json: {line}")
    if headers_def is not None:
        for line in contract_schemas.errors("headers", headers or {}, f"#/$defs/{headers_def}"):
            failures.append(f"{what} headers {headers} do not match headers.json#/$defs/{headers_def}: {line}")


def send(body, command_id, routing_key=None, raw=None):
    """Publishes a command (or `raw` bytes, not validated) and returns the parsed reply."""
    if raw is None:
        conforms("command", f"command {command_id}", body)
    corr = str(uuid.uuid4())
    ch.basic_publish(
        exchange=f"{prefix}.commands",
        routing_key=routing_key or run_id,
        body=raw if raw is not None else json.dumps(body).encode(),
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
        reply = json.loads(payload)
        conforms("reply", f"reply to {command_id}", reply, props.headers, "reply")
        return reply
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

for m, e, p in seen:
    rejected = e.get("type") == "command_rejected"
    conforms("event", f"event {m.routing_key} {p.message_id}", e, p.headers,
             "command_rejected" if rejected else "event")

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

# Contract 1.1 and the other message shapes, on runs of their own: a heartbeated action, a
# re-run, refusals with and without a run, and an unattributable message (dead-lettered and
# answered). Every reply and event is validated as above.
more_q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
for suffix in ("hb", "rerun"):
    ch.queue_bind(more_q, f"{prefix}.events", routing_key=f"run.{run_id}-{suffix}.#")
hb_run, rerun_run = f"{run_id}-hb", f"{run_id}-rerun"
r = send({"command": "start", "run_id": hb_run, "agent_id": "pika", "input": {"n": 1}, "config": {"timeout_s": 600}},
         f"{hb_run}-c1", hb_run)
check(r.get("ok") is True, f"start {hb_run}: {r}")
r = send({"command": "require_action", "run_id": hb_run,
          "action": {"id": "job", "type": "system_action", "action": "crunch", "heartbeat_timeout_s": 60}},
         f"{hb_run}-c2", hb_run)
check(r.get("ok") is True, f"require_action with heartbeat_timeout_s: {r}")
r = send({"command": "heartbeat_action", "run_id": hb_run, "action_id": "job", "details": {"progress": 0.5}},
         f"{hb_run}-c3", hb_run)
pending = (r.get("run") or {}).get("pending_actions") or [{}]
check(r.get("ok") is True and r["run"]["version"] == 3 and pending[0].get("heartbeat_count") == 1
      and pending[0].get("heartbeat_details") == {"progress": 0.5}, f"heartbeat_action reply {r}")
r = send({"command": "complete_action", "run_id": hb_run, "action_id": "job", "result": {"rows": 3}}, f"{hb_run}-c4", hb_run)
r = send({"command": "complete", "run_id": hb_run, "result": 3}, f"{hb_run}-c5", hb_run)
check(r.get("ok") is True and r["run"]["status"] == "completed", f"complete {hb_run}: {r}")
r = send({"command": "heartbeat_action", "run_id": hb_run, "action_id": "job"}, f"{hb_run}-c6", hb_run)
check(r.get("ok") is False and r.get("error", {}).get("code") == "invalid_transition", f"late heartbeat {r}")
r = send({"command": "rerun", "run_id": rerun_run, "previous_run_id": hb_run, "input": {"n": 2}},
         f"{rerun_run}-c1", rerun_run)
check(r.get("ok") is True and r["run"]["previous_run_id"] == hb_run and r["run"]["agent_id"] == "pika"
      and r["run"]["status"] == "running", f"rerun reply {r}")
r = send({"command": "cancel", "run_id": f"{run_id}-none"}, f"{run_id}-none-c1", f"{run_id}-none")
check(r.get("ok") is False and r.get("run") is None and r.get("error", {}).get("code") == "run_not_found",
      f"command for an unknown run: {r}")
r = send(None, f"{run_id}-junk", run_id, raw=b'{"command": ')
check(r.get("ok") is False and r.get("error", {}).get("code") == "malformed_message", f"unparsable body: {r}")
more = []
deadline = time.time() + 20
while time.time() < deadline and len([e for e in more if e["type"] != "command_rejected"]) < 7:
    method, props, payload = ch.basic_get(more_q, auto_ack=True)
    if method is None:
        time.sleep(0.02)
        continue
    e = json.loads(payload)
    more.append(e)
    conforms("event", f"event {method.routing_key} {props.message_id}", e, props.headers,
             "command_rejected" if e.get("type") == "command_rejected" else "event")
check([e["type"] for e in more if e["run_id"] == hb_run and e["type"] != "command_rejected"]
      == ["created", "started", "action_required", "action_completed", "completed"], f"events of {hb_run}: {more}")
check([e["type"] for e in more if e["run_id"] == rerun_run] == ["created", "started"], f"events of {rerun_run}: {more}")

# The unparsable body is in the dead-letter queue, with its reason in the headers.
dead = None
deadline = time.time() + 20
while time.time() < deadline and dead is None:
    method, props, payload = ch.basic_get(f"{prefix}.dead", auto_ack=True)
    if method is None:
        time.sleep(0.02)
    elif props.message_id == f"{run_id}-junk":
        dead = (props, payload)
check(dead is not None and dead[1] == b'{"command": ', f"dead letter of {run_id}-junk: {dead}")
if dead is not None:
    for line in contract_schemas.errors("headers", dead[0].headers or {}, "#/$defs/dead_letter"):
        failures.append(f"dead letter headers {dead[0].headers} do not match headers.json#/$defs/dead_letter: {line}")
    check((dead[0].headers or {}).get("x-reason") == "malformed_message", f"dead letter headers {dead[0].headers}")

check(validated["command"] >= 6 and validated["reply"] >= 6 and validated["event"] >= 6,
      f"too little was validated against docs/schemas: {validated}")

conn.close()
if failures:
    print("FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print(f"validated against docs/schemas: {validated['command']} commands, {validated['reply']} replies, "
      f"{validated['event']} events")
print("pika interop: ok")
