#!/usr/bin/env python3
"""Checks the live run board in a real browser while runs go through their life.

Opens the board (headless Debian chromium + chromedriver, 1280x800) against a running worker,
then publishes commands with pika exactly as docs/CONTRACT.md says (exchange
`<prefix>.commands`, routing key = the run id, message_id = the command id, reply_to for the
answer) and asserts on what the page shows, without ever reloading it:

  run A (agent A): start, require_action, complete_action, complete -> completed
  run B (agent B): start, fail (not retryable)                    -> failed
  run C (agent C): create, cancel                                 -> cancelled
  run D (agent D): start, complete, while the board filters on agent D + completed
                   (run X, another agent, completes just before and must not show)
  run E (agent E): create; its detail is opened; then start, require_action (with a timeout,
                   so it has a deadline), complete (refused: the action is pending), cancel:
                   the open timeline follows live, the refusal included

With a token, the board is opened as /#token=T (or, with --token-in query, through an old
/?token=T link, which the worker redirects to the fragment), and the browser's network log must
show the token in no request line and no Referer (the old link's own first request aside), and
as a bearer header on the event stream.

Usage:
  board_check.py --http http://127.0.0.1:8080 --amqp amqp://guest:guest@127.0.0.1:5672/
      [--prefix runs] [--commands-exchange runs.commands] [--token T] [--token-in fragment|query]
      [--screenshot out.png]

Prints one line per check; exits 1 with the reason at the first failure (2 on bad setup).
Needs: selenium, pika, chromium, chromedriver (scripts/lib.sh: ensure_browser_deps,
ensure_test_deps).
"""
import argparse
import json
import os
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

STATUSES = ["created", "running", "waiting", "retrying", "completed", "failed", "cancelled"]


class CheckFailed(Exception):
    pass


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http", required=True, help="the worker's HTTP base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--amqp", required=True, help="broker URL, e.g. amqp://guest:guest@127.0.0.1:5672/")
    ap.add_argument("--prefix", default="runs", help="the worker's name prefix (default: runs)")
    ap.add_argument("--commands-exchange", default=None,
                    help="exchange commands are published to (default: <prefix>.commands); "
                         "the routing key is always the run id")
    ap.add_argument("--token", default=os.environ.get("RUNWORKER_HTTP_TOKEN", ""),
                    help="the worker's http_token, if set (default: $RUNWORKER_HTTP_TOKEN)")
    ap.add_argument("--token-in", choices=["fragment", "query"], default="fragment",
                    help="open the board with #token= (default) or an old ?token= link")
    ap.add_argument("--run-id-prefix", default="board",
                    help="run ids are <this>-<unique>-<a..e> (default: board)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for each condition (default 20)")
    ap.add_argument("--screenshot", default=None, help="save a PNG of the board at the end (and on failure)")
    ap.add_argument("--chromium", default=None, help="browser binary (default: chromium from PATH)")
    ap.add_argument("--chromedriver", default=None, help="driver binary (default: chromedriver from PATH)")
    ap.add_argument("--show", action="store_true", help="run the browser with a window (not headless)")
    a = ap.parse_args()
    a.http = a.http.rstrip("/")
    a.commands_exchange = a.commands_exchange or f"{a.prefix}.commands"
    return a


def ok(what):
    print(f"ok   {what}", flush=True)


def wait_for(what, probe, timeout):
    """Polls probe() until it returns a truthy value, for at most `timeout` seconds.

    probe returns (done, observed); `observed` is shown when the time is up."""
    deadline = time.monotonic() + timeout
    observed = None
    while True:
        try:
            done, observed = probe()
        except CheckFailed:
            raise
        except Exception as e:  # a stale element, a page mid-render: try again
            done, observed = False, f"{type(e).__name__}: {e}"
        if done:
            ok(what)
            return observed
        if time.monotonic() >= deadline:
            raise CheckFailed(f"{what}: not after {timeout:g} s; last seen: {observed!r}")
        time.sleep(0.1)


class Commands:
    """Publishes commands as docs/CONTRACT.md describes and waits for each reply."""

    def __init__(self, url, exchange, timeout):
        import pika
        self.pika = pika
        self.exchange, self.timeout = exchange, timeout
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.replies = self.ch.queue_declare("", exclusive=True, auto_delete=True).method.queue

    def send(self, run_id, command, expect_ok=True, **fields):
        command_id = f"{run_id}-{command}-{uuid.uuid4().hex[:8]}"
        corr = uuid.uuid4().hex
        body = {"command": command, "run_id": run_id, **fields}
        self.ch.basic_publish(
            exchange=self.exchange, routing_key=run_id, body=json.dumps(body).encode(),
            properties=self.pika.BasicProperties(
                content_type="application/json", delivery_mode=2, message_id=command_id,
                reply_to=self.replies, correlation_id=corr))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            method, props, payload = self.ch.basic_get(self.replies, auto_ack=True)
            if method is None:
                self.conn.process_data_events(time_limit=0.05)
                continue
            if props.correlation_id != corr:
                continue  # a late answer to an earlier command
            reply = json.loads(payload)
            if bool(reply.get("ok")) != expect_ok:
                raise CheckFailed(f"{command} on {run_id}: expected ok={expect_ok}, reply {reply}")
            return reply
        raise CheckFailed(f"{command} on {run_id}: no reply within {self.timeout:g} s "
                          f"(is the worker consuming {self.exchange}?)")

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


def api_get(args, path):
    req = urllib.request.Request(args.http + path, headers={"Accept": "application/json"})
    if args.token:
        req.add_header("Authorization", f"Bearer {args.token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def start_browser(args):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = args.chromedriver or shutil.which("chromedriver")
    if not chromium or not driver:
        print("SETUP: chromium and chromedriver are needed (scripts/lib.sh: ensure_browser_deps)", file=sys.stderr)
        sys.exit(2)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    if not args.show:
        opts.add_argument("--headless=new")
    for a in ("--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,800",
              "--no-first-run", "--no-default-browser-check", "--disable-extensions",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--force-device-scale-factor=1"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    os.environ.setdefault("SE_AVOID_STATS", "true")
    b = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    b.set_window_size(1280, 800)
    b.set_page_load_timeout(args.timeout)
    return b


# Everything the checks read from the page, in one round trip.
READ_ROWS = """
return Array.from(document.querySelectorAll('#runs tr[data-run-id]')).map(function (tr) {
  function f(name) { var td = tr.querySelector('td[data-field="' + name + '"]'); return td ? td.textContent.trim() : null; }
  return {id: tr.getAttribute('data-run-id'), agent: f('agent_id'), status: f('status'),
          attempt: f('attempt'), version: f('version'), updated: f('updated_at'),
          visible: tr.offsetParent !== null};
});
"""
READ_COUNTS = """
var out = {};
document.querySelectorAll('[data-status-count]').forEach(function (n) {
  out[n.getAttribute('data-status-count')] = n.textContent.trim();
});
return out;
"""
READ_TIMELINE = """
var d = document.getElementById('run-detail');
var items = Array.from(document.querySelectorAll('#timeline > li')).map(function (li) {
  return {seq: li.getAttribute('data-seq'), type: li.getAttribute('data-type'), text: li.textContent};
});
var pending = Array.from(document.querySelectorAll('#pending-actions li[data-action-id]')).map(function (li) {
  return {id: li.getAttribute('data-action-id'), text: li.textContent};
});
return {open: !!d && !d.hidden && d.offsetParent !== null,
        title: (document.getElementById('detail-run-id') || {}).textContent,
        items: items, pending: pending,
        snapshot: (document.getElementById('snapshot') || {}).textContent};
"""


def main():
    args = parse_args()
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select
        import pika  # noqa: F401
    except ImportError as e:
        print(f"SETUP: {e} (scripts/lib.sh: ensure_browser_deps, ensure_test_deps)", file=sys.stderr)
        sys.exit(2)

    t = args.timeout
    uniq = time.strftime("%H%M%S") + secrets.token_hex(3)
    run = {k: f"{args.run_id_prefix}-{uniq}-{k}" for k in "abcdex"}
    agent = {k: f"board-agent-{k}-{uniq}" for k in "abcdex"}

    try:
        urllib.request.urlopen(args.http + "/healthz", timeout=10).read()
    except Exception as e:
        print(f"SETUP: the worker's HTTP side does not answer at {args.http}/healthz: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        cmds = Commands(args.amqp, args.commands_exchange, t)
    except Exception as e:
        print(f"SETUP: cannot connect to the broker at {args.amqp}: {type(e).__name__} {e!r}", file=sys.stderr)
        sys.exit(2)
    browser = start_browser(args)
    failed = None
    try:
        run_checks(args, browser, cmds, By, Select, run, agent, t)
    except CheckFailed as e:
        failed = str(e)
    except Exception as e:  # a broken page or driver: report it like a failed check
        detail = getattr(e, "msg", None) or str(e)
        failed = f"{type(e).__name__}: {detail.strip().splitlines()[0] if detail.strip() else ''}"
    finally:
        if args.screenshot:
            try:
                browser.save_screenshot(args.screenshot)
                print(f"screenshot: {args.screenshot}", flush=True)
            except Exception as e:
                print(f"(no screenshot: {e})", flush=True)
        if failed:
            try:
                logs = [f"  {l.get('level')}: {l.get('message')}" for l in browser.get_log("browser")]
                if logs:
                    print("browser console:\n" + "\n".join(logs[-20:]), file=sys.stderr)
            except Exception:
                pass
        browser.quit()
        cmds.close()
    if failed:
        print(f"FAIL {failed}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("board check: ok", flush=True)


def run_checks(args, browser, cmds, By, Select, run, agent, t):
    def rows():
        return browser.execute_script(READ_ROWS)

    def row_map():
        return {r["id"]: r for r in rows()}

    def counts():
        return browser.execute_script(READ_COUNTS)

    def timeline():
        return browser.execute_script(READ_TIMELINE)

    def wait_row(run_id, status, what=None):
        def probe():
            r = row_map().get(run_id)
            return bool(r and r["status"] == status and r["visible"]), r
        return wait_for(what or f"row {run_id} shows {status}", probe, t)

    def set_filters(status, agent_id):
        Select(browser.find_element(By.ID, "status-filter")).select_by_value(status)
        box = browser.find_element(By.ID, "agent-filter")
        box.clear()
        if agent_id:
            box.send_keys(agent_id)
        # The box filters after a short pause in typing; Enter applies it at once.
        box.send_keys("\n")

    # --- open the board -------------------------------------------------------------------------
    quoted = urllib.parse.quote(args.token, safe="")
    url = args.http + "/" + ((("#token=" if args.token_in == "fragment" else "?token=") + quoted) if args.token else "")
    browser.get(url)
    wait_for("board page loaded", lambda: (browser.find_element(By.ID, "runs-table") is not None, browser.title), t)
    browser.execute_script("window.__boardCheckMarker = arguments[0];", run["a"])
    wait_for("stream indicator says live",
             lambda: (browser.find_element(By.ID, "stream-state").text.strip() == "live",
                      browser.find_element(By.ID, "stream-state").text), t)
    wait_for("a count per status is shown",
             lambda: (all(counts().get(s, "").isdigit() for s in STATUSES), counts()), t)
    before = {s: int(v) for s, v in counts().items()}

    # --- drive runs A, B, C while the page is open ----------------------------------------------
    cmds.send(run["a"], "start", agent_id=agent["a"], input={"question": "2 + 2"})
    wait_row(run["a"], "running", f"run A appears live as running ({run['a']})")
    cmds.send(run["a"], "require_action",
              action={"id": "calc-1", "type": "tool_call", "tool": "calculator", "args": {"expression": "2 + 2"}})
    wait_row(run["a"], "waiting", "run A turns waiting live")
    cmds.send(run["a"], "complete_action", action_id="calc-1", result=4)
    cmds.send(run["a"], "complete", result={"answer": 4})

    cmds.send(run["b"], "start", agent_id=agent["b"])
    cmds.send(run["b"], "fail", error={"code": "tool_crashed", "message": "the calculator crashed"},
              retryable=False)

    cmds.send(run["c"], "create", agent_id=agent["c"])
    cmds.send(run["c"], "cancel", reason="not needed")

    expected_final = {"a": ("completed", "5"), "b": ("failed", "3"), "c": ("cancelled", "2")}
    for k, (status, version) in expected_final.items():
        def probe(k=k, status=status, version=version):
            r = row_map().get(run[k])
            good = bool(r and r["status"] == status and r["version"] == version and r["agent"] == agent[k])
            return good, r
        wait_for(f"run {k.upper()} row: {status}, version {version}, agent {agent[k]}", probe, t)

    def newest_first():
        ids = [r["id"] for r in rows()]
        pos = [ids.index(run[k]) if run[k] in ids else None for k in "cba"]
        return None not in pos and pos == sorted(pos), pos
    wait_for("rows are newest first (C above B above A)", newest_first, t)

    # --- counts -----------------------------------------------------------------------------------
    def counts_match():
        shown = counts()
        api = api_get(args, "/v1/counts")["runs_by_status"]
        same = all(shown.get(s) == str(api.get(s, 0)) for s in STATUSES)
        grown = all(int(shown.get(s, "0") or 0) >= before.get(s, 0) + 1 for s in ("completed", "failed", "cancelled"))
        return same and grown, {"shown": shown, "api": api, "before": before}
    wait_for("counts follow the store (completed, failed, cancelled each grew)", counts_match, t)

    # --- filters ----------------------------------------------------------------------------------
    set_filters("failed", "")

    def only_failed():
        rs = rows()
        ids = {r["id"] for r in rs}
        good = (run["b"] in ids and run["a"] not in ids and run["c"] not in ids
                and all(r["status"] == "failed" for r in rs))
        return good, [(r["id"], r["status"]) for r in rs][:10]
    wait_for("status filter 'failed' shows only failed runs, B among them", only_failed, t)

    set_filters("", agent["a"])

    def only_agent_a():
        rs = rows()
        return [r["id"] for r in rs] == [run["a"]], [(r["id"], r["agent"]) for r in rs][:10]
    wait_for("agent filter shows only run A", only_agent_a, t)

    # Live updates honour the filters: D shows only once it has completed, and nothing else.
    set_filters("completed", agent["d"])
    wait_for("filter completed + agent D: list is empty",
             lambda: (rows() == [], [r["id"] for r in rows()]), t)
    # #stream-state's data-events: how many stream events the rendered page reflects. Waiting
    # for it to grow shows when a run that must stay hidden has been taken in.
    def events_shown():
        v = browser.find_element(By.ID, "stream-state").get_attribute("data-events") or ""
        return int(v) if v.isdigit() else 0

    def taken_in(n, whose):
        base = events_shown()
        return lambda: wait_for(f"the page took in {whose}'s {n} events",
                                lambda: (events_shown() >= base + n, {"base": base, "now": events_shown()}), t)

    def still_empty(what):
        shown = [(r["id"], r["status"]) for r in rows()]
        if shown:
            raise CheckFailed(f"{what}: the filtered list shows {shown}")
        ok(what)

    seen_x = taken_in(3, "run X")
    cmds.send(run["x"], "start", agent_id=agent["x"])
    cmds.send(run["x"], "complete")
    seen_x()
    still_empty("run X (another agent) completed and stays hidden")
    seen_d = taken_in(2, "run D")
    cmds.send(run["d"], "start", agent_id=agent["d"])
    seen_d()
    still_empty("run D, running, stays hidden under the filter 'completed'")
    cmds.send(run["d"], "complete", result="done")

    def only_d_completed():
        rs = rows()
        return [(r["id"], r["status"]) for r in rs] == [(run["d"], "completed")], [(r["id"], r["status"]) for r in rs]
    wait_for("filtered list gains run D live when it completes, and only D", only_d_completed, t)

    set_filters("", "")

    def all_back():
        ids = {r["id"] for r in rows()}
        return all(run[k] in ids for k in "abcdx"), sorted(ids)[:12]
    wait_for("clearing the filters shows runs A to D (and X) again", all_back, t)

    # --- the detail panel -------------------------------------------------------------------------
    browser.find_element(By.CSS_SELECTOR, f'#runs tr[data-run-id="{run["a"]}"]').click()
    expected_a = ["created", "started", "action_required", "action_completed", "completed"]

    def timeline_a():
        d = timeline()
        seqd = [i for i in d["items"] if i["seq"] is not None]
        types = [i["type"] for i in seqd]
        seqs = [int(i["seq"]) for i in seqd]
        return (d["open"] and d["title"] == run["a"] and types == expected_a and seqs == [1, 2, 3, 4, 5],
                {"open": d["open"], "title": d["title"], "types": types, "seqs": seqs})
    wait_for("clicking run A opens its timeline: " + " > ".join(expected_a), timeline_a, t)

    d = timeline()
    items = {i["type"]: i for i in d["items"]}
    checks = [
        ("calc-1" in items["action_required"]["text"] and "calculator" in items["action_required"]["text"]
         and "tool_call" in items["action_required"]["text"],
         "run A's action_required shows the action id, type and tool"),
        ("completed" in items["completed"]["text"] and "stop" in items["completed"]["text"],
         "run A's completed event shows its stop_reason"),
    ]
    for good, what in checks:
        if not good:
            raise CheckFailed(f"{what}: timeline items {d['items']}")
        ok(what)

    browser.find_element(By.CSS_SELECTOR, f'#runs tr[data-run-id="{run["b"]}"]').click()

    def timeline_b():
        d = timeline()
        types = [i["type"] for i in d["items"] if i["seq"] is not None]
        failed = [i for i in d["items"] if i["type"] == "failed"]
        good = (d["title"] == run["b"] and types == ["created", "started", "failed"] and failed
                and "tool_crashed" in failed[0]["text"] and "the calculator crashed" in failed[0]["text"])
        return good, {"title": d["title"], "types": types, "failed": failed}
    wait_for("run B's timeline shows its failure: tool_crashed, the calculator crashed", timeline_b, t)
    wait_for("run B's snapshot shows the error",
             lambda: ("the calculator crashed" in timeline()["snapshot"], timeline()["snapshot"]), t)

    # --- the open run's timeline follows the stream -----------------------------------------------
    cmds.send(run["e"], "create", agent_id=agent["e"])
    wait_row(run["e"], "created", "run E appears live as created")
    browser.find_element(By.CSS_SELECTOR, f'#runs tr[data-run-id="{run["e"]}"] button').click()
    wait_for("run E's detail opens with [created]",
             lambda: ((lambda d: (d["title"] == run["e"] and [i["type"] for i in d["items"]] == ["created"], d))(timeline())), t)
    cmds.send(run["e"], "start")
    cmds.send(run["e"], "require_action",
              action={"id": "search-1", "type": "tool_call", "tool": "web_search", "args": {"q": "runs"},
                      "timeout_s": 600})

    def e_waiting():
        d = timeline()
        types = [i["type"] for i in d["items"]]
        pend = d["pending"]
        good = (types == ["created", "started", "action_required"] and len(pend) == 1
                and pend[0]["id"] == "search-1" and "deadline" in pend[0]["text"]
                and "no deadline" not in pend[0]["text"])
        return good, {"types": types, "pending": pend}
    wait_for("run E's open timeline grows live and lists the pending action with its deadline", e_waiting, t)
    # Refused while the action is pending. Rejections are not kept in the history: the open
    # timeline shows them from the live stream only.
    cmds.send(run["e"], "complete", expect_ok=False)

    def e_rejected():
        d = timeline()
        types = [i["type"] for i in d["items"]]
        rej = [i for i in d["items"] if i["type"] == "command_rejected"]
        good = (types == ["created", "started", "action_required", "command_rejected"]
                and rej[0]["seq"] is None and "invalid_transition" in rej[0]["text"])
        return good, {"types": types, "rejected": rej}
    wait_for("run E's open timeline shows the refused complete live (command_rejected, invalid_transition)",
             e_rejected, t)
    cmds.send(run["e"], "cancel", reason="board check done")

    def e_cancelled():
        d = timeline()
        types = [i["type"] for i in d["items"]]
        last = d["items"][-1]["text"] if d["items"] else ""
        good = (types == ["created", "started", "action_required", "command_rejected", "cancelled"]
                and not d["pending"] and "cancelled" in last and "stop" in last)
        return good, {"types": types, "pending": d["pending"], "last": last}
    wait_for("run E's timeline ends live with cancelled (stop_reason) and no pending action", e_cancelled, t)
    wait_row(run["e"], "cancelled", "run E's row shows cancelled")

    # --- the page was never reloaded --------------------------------------------------------------
    marker = browser.execute_script("return window.__boardCheckMarker || null;")
    if marker != run["a"]:
        raise CheckFailed("the page was reloaded during the check (marker lost)")
    ok("everything above arrived without reloading the page")
    wait_for("stream indicator is live at the end",
             lambda: (browser.find_element(By.ID, "stream-state").text.strip() == "live",
                      browser.find_element(By.ID, "stream-state").text), t)
    err = browser.execute_script("var e = document.getElementById('board-error'); return e && !e.hidden ? e.textContent : '';")
    if err:
        raise CheckFailed(f"the board shows an error: {err}")
    ok("no error shown on the board")
    if args.token:
        check_token_kept_private(args, browser, quoted)


def check_token_kept_private(args, browser, quoted):
    """The token is in no request line and no Referer, only in Authorization headers (the
    event stream's among them); an old ?token= link's own first request is the one exception,
    redirected at once. The address bar no longer shows it."""
    requests = {}  # requestId -> {"url", "headers"}
    order = []
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Network.requestWillBeSent":
            rid = params["requestId"]
            if rid not in requests:
                requests[rid] = {"urls": [], "headers": {}}
                order.append(rid)
            # A redirect is the same request id with a new URL.
            requests[rid]["urls"].append(params["request"]["url"])
            requests[rid]["headers"].update({k.lower(): v for k, v in params["request"].get("headers", {}).items()})
        elif method == "Network.requestWillBeSentExtraInfo":
            rid = params["requestId"]
            requests.setdefault(rid, {"urls": [], "headers": {}})
            if rid not in order:
                order.append(rid)
            requests[rid]["headers"].update({k.lower(): v for k, v in params.get("headers", {}).items()})
    secrets_seen = (args.token, quoted)
    lines = [(rid, u) for rid in order for u in requests[rid]["urls"]]
    if not lines:
        raise CheckFailed("the browser's network log is empty")
    leaks = [u for _, u in lines if any(t in u.split("#", 1)[0] for t in secrets_seen) or "access_token" in u]
    if args.token_in == "query":
        first = lines[0][1]
        if not leaks or leaks[0] != first:
            raise CheckFailed(f"the old link's first request should carry ?token=: {lines[:3]}")
        leaks = leaks[1:]
    if leaks:
        raise CheckFailed(f"the token is in request lines: {leaks[:5]}")
    ok(f"the token is in no request line ({len(lines)} requests)")
    referers = [r["headers"].get("referer") for r in requests.values() if r["headers"].get("referer")]
    if referers:
        raise CheckFailed(f"requests carry a Referer: {referers[:5]}")
    ok("no request carries a Referer")
    stream = [r for r in requests.values() if any("/v1/events/stream" in u for u in r["urls"])]
    if not stream or not all(r["headers"].get("authorization") == f"Bearer {args.token}" for r in stream):
        raise CheckFailed(f"the event stream is not read with the bearer header: {stream[:2]}")
    ok("the event stream is read with the bearer header")
    if any(t in browser.current_url for t in secrets_seen):
        raise CheckFailed(f"the address bar still shows the token: {browser.current_url}")
    ok("the address bar no longer shows the token")


if __name__ == "__main__":
    main()
