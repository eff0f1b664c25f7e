// The live run board: plain browser JavaScript, no build step, no dependencies.
//
// Data: GET v1/counts, v1/runs, v1/runs/{id}, v1/runs/{id}/events, and the live stream
// GET v1/events/stream (read with fetch, so that the token goes in a header). Paths are
// relative, so the board also works behind a proxy that serves the worker under a sub-path.
//
// The token: open the board as /#token=<http_token>. A fragment never leaves the browser: it is
// in no request line, log or Referer. The page remembers it (localStorage), takes it out of the
// address bar, and sends it as `Authorization: Bearer` on every request, the stream included
// (EventSource cannot set headers, which is why the stream is read with fetch).
//
// Consistency: the stream is opened first and every (re)open reloads the lists, so nothing is
// missed between a query and the stream. Events that arrive while a query is in flight are
// kept and replayed over its answer; a row only ever moves to a higher `version`.
//
// All data goes into the page through textContent / attributes, never as HTML.
(function () {
  "use strict";

  var STATUSES = ["created", "running", "waiting", "retrying", "completed", "failed", "cancelled"];
  var EVENT_TYPES = [
    "created", "started", "action_required", "action_completed", "action_failed", "completed",
    "failed", "cancelled", "retry_scheduled", "timed_out", "command_rejected",
  ];
  var PAGE_LIMIT = 100;          // rows asked of v1/runs
  var MAX_ROWS = 500;            // rows kept in the table (newest first)
  var COUNTS_INTERVAL_MS = 1000; // counts are fetched at most this often
  var COUNTS_IDLE_MS = 30000;    // and at least this often
  var TOKEN_KEY = "runworker.token";

  function $(id) { return document.getElementById(id); }

  // --- token: #token=... (remembered in localStorage) or a remembered one ---------------------
  // (An old link's ?token= is redirected by the worker to #token=.)
  var token = (function () {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    var t = null;
    if (params.has("token")) {
      t = params.get("token");
      try {
        if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
      } catch (e) { /* not remembered: this page still has it */ }
      // Keep the secret out of the address bar (history, screenshots); #run= stays.
      params.delete("token");
      var h = params.toString();
      history.replaceState(null, "", location.pathname + location.search + (h ? "#" + h : ""));
    } else {
      try { t = localStorage.getItem(TOKEN_KEY); } catch (e) { t = null; }
    }
    return t || null;
  })();

  // --- errors shown in the alert line, one per source ----------------------------------------
  var errors = new Map();
  function setError(source, message) { errors.set(source, message); showErrors(); }
  function clearError(source) { if (errors.delete(source)) showErrors(); }
  function showErrors() {
    var el = $("board-error");
    var text = Array.from(errors.values()).join(" · ");
    el.textContent = text;
    el.hidden = text === "";
  }
  function describe(err) {
    if (err && err.status === 401) return "unauthorized: open the board with #token=<http_token>";
    return (err && err.message) || String(err);
  }

  function api(path) {
    var headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    return fetch(path, { headers: headers, cache: "no-store" }).then(function (res) {
      return res.json().catch(function () { return null; }).then(function (body) {
        if (!res.ok) {
          var e = (body && body.error) || {};
          var err = new Error(e.message || ("HTTP " + res.status));
          err.status = res.status;
          err.code = e.code;
          throw err;
        }
        return body;
      });
    });
  }

  // --- formatting ---------------------------------------------------------------------------
  function fmtTime(s) {
    if (typeof s !== "string") return "";
    var m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:\d\d)$/.exec(s);
    return m ? m[1] + " " + m[2] + (m[3] === "Z" ? "" : " " + m[3]) : s;
  }
  // Today's times (UTC) without the date, to keep the table narrow; the title has it all.
  function fmtShortTime(s) {
    var t = fmtTime(s);
    var today = new Date().toISOString().slice(0, 10) + " ";
    return t.indexOf(today) === 0 ? t.slice(today.length) : t;
  }
  function fmtJSON(v) {
    var s;
    try { s = JSON.stringify(v, null, 1); } catch (e) { s = String(v); }
    return s.length > 2000 ? s.slice(0, 2000) + " …" : s;
  }
  function fmtError(e) {
    if (!e || typeof e !== "object") return "";
    return (e.code ? e.code + ": " : "") + (e.message || "");
  }
  function el(tag, attrs, text) {
    var n = document.createElement(tag);
    if (attrs) for (var k in attrs) if (attrs[k] != null) n.setAttribute(k, attrs[k]);
    if (text != null) n.textContent = String(text);
    return n;
  }
  function badge(status) { return el("span", { "class": "badge st-" + status }, status); }

  // --- state --------------------------------------------------------------------------------
  var state = {
    runs: new Map(),     // run_id -> {run_id, status, attempt, version, created_at, updated_at}
    known: new Map(),    // run_id -> {agent_id, created_at}: what never changes, kept across reloads
    filter: { status: "", agent: "" },
    loading: null,       // events received while v1/runs is in flight, replayed over its answer
    loadGen: 0,
    open: null,          // the run shown in the detail panel
  };
  var MAX_KNOWN = 5000;

  function remember(id, agentID, createdAt) {
    var k = state.known.get(id);
    if (!k) {
      if (state.known.size >= MAX_KNOWN) state.known.delete(state.known.keys().next().value);
      k = {};
      state.known.set(id, k);
    }
    k.agent_id = agentID == null ? null : agentID;
    if (createdAt) k.created_at = createdAt;
  }
  function agentOf(id) { var k = state.known.get(id); return k ? k.agent_id : undefined; }

  function mergeSnapshot(s) {
    if (!s || typeof s.run_id !== "string") return;
    remember(s.run_id, s.agent_id, s.created_at);
    var r = state.runs.get(s.run_id);
    if (!r) {
      r = { run_id: s.run_id, version: -1 };
      state.runs.set(s.run_id, r);
    }
    if (s.created_at) r.created_at = s.created_at;
    if (typeof s.version === "number" && s.version >= r.version) {
      r.status = s.status;
      r.attempt = s.attempt;
      r.version = s.version;
      r.updated_at = s.updated_at;
    }
  }

  function applyEventToRuns(ev) {
    if (typeof ev.seq !== "number") return; // command_rejected changes nothing
    if (ev.type === "created") remember(ev.run_id, ev.agent_id, ev.occurred_at);
    var version = typeof ev.version === "number" ? ev.version : ev.seq;
    var r = state.runs.get(ev.run_id);
    if (!r) {
      var k = state.known.get(ev.run_id);
      r = { run_id: ev.run_id, version: -1, created_at: k ? k.created_at : null };
      state.runs.set(ev.run_id, r);
      if (!k || !k.created_at) lookup(ev.run_id);
    }
    if (version <= r.version) return; // a repeat or an older event
    r.status = ev.status;
    r.attempt = ev.attempt;
    r.version = version;
    r.updated_at = ev.occurred_at;
  }

  // A run first seen through a later event (created before the board's first query): its agent
  // and creation time come from its snapshot. Two at a time, so that a burst of such runs
  // cannot hold up the board's other requests.
  var lookups = { queued: [], ids: new Set(), active: 0 };
  function lookup(id) {
    if (lookups.ids.has(id)) return;
    lookups.ids.add(id);
    lookups.queued.push(id);
    nextLookup();
  }
  function nextLookup() {
    if (lookups.active >= 2 || lookups.queued.length === 0) return;
    var id = lookups.queued.shift();
    var gen = state.loadGen;
    lookups.active++;
    api("v1/runs/" + encodeURIComponent(id)).then(function (s) {
      // After a reload that dropped this run, the answer may be older than events since missed.
      if (gen === state.loadGen || state.runs.has(id)) mergeSnapshot(s);
    }, function () { /* it shows without an agent; the next reload fills it in */ })
      .then(function () {
        lookups.active--;
        lookups.ids.delete(id);
        scheduleRender();
        nextLookup();
      });
  }

  function prune() {
    if (state.runs.size <= MAX_ROWS * 2) return;
    var all = Array.from(state.runs.values()).sort(newestFirst);
    for (var i = MAX_ROWS * 2; i < all.length; i++) state.runs.delete(all[i].run_id);
  }

  function matches(r) {
    if (state.filter.status && r.status !== state.filter.status) return false;
    if (state.filter.agent) {
      if (agentOf(r.run_id) !== state.filter.agent) return false;
    }
    return true;
  }

  function newestFirst(a, b) {
    var ta = a.created_at || a.updated_at || "";
    var tb = b.created_at || b.updated_at || "";
    if (ta !== tb) return ta < tb ? 1 : -1;
    return a.run_id < b.run_id ? 1 : a.run_id > b.run_id ? -1 : 0;
  }

  // --- loading ------------------------------------------------------------------------------
  function loadRuns() {
    var gen = ++state.loadGen;
    state.loading = [];
    var q = new URLSearchParams({ limit: String(PAGE_LIMIT) });
    if (state.filter.status) q.set("status", state.filter.status);
    if (state.filter.agent) q.set("agent_id", state.filter.agent);
    return api("v1/runs?" + q.toString()).then(function (body) {
      if (gen !== state.loadGen) return;
      var buffered = state.loading || [];
      state.loading = null;
      state.runs = new Map();
      (body.runs || []).forEach(mergeSnapshot);
      buffered.forEach(applyEventToRuns);
      clearError("runs");
      scheduleRender();
    }, function (err) {
      if (gen !== state.loadGen) return;
      state.loading = null; // keep what is shown
      setError("runs", "runs: " + describe(err));
    });
  }

  var counts = { timer: null, last: 0, inFlight: false, again: false };
  function requestCounts() {
    if (counts.timer) return;
    var wait = Math.max(0, counts.last + COUNTS_INTERVAL_MS - Date.now());
    counts.timer = setTimeout(function () { counts.timer = null; loadCounts(); }, wait);
  }
  function loadCounts() {
    if (counts.inFlight) { counts.again = true; return; }
    counts.inFlight = true;
    counts.last = Date.now();
    api("v1/counts").then(function (body) {
      var by = (body && body.runs_by_status) || {};
      STATUSES.forEach(function (s) {
        var n = document.querySelector('[data-status-count="' + s + '"]');
        if (n) n.textContent = String(by[s] || 0);
      });
      $("count-total").textContent = String(body && typeof body.total === "number" ? body.total : "–");
      clearError("counts");
    }, function (err) {
      setError("counts", "counts: " + describe(err));
    }).then(function () {
      counts.inFlight = false;
      if (counts.again) { counts.again = false; requestCounts(); }
    });
  }
  setInterval(requestCounts, COUNTS_IDLE_MS);

  // --- the live stream ----------------------------------------------------------------------
  var stream = { gen: 0, retryMs: 1000 };
  function setStreamState(live) {
    var s = $("stream-state");
    s.textContent = live ? "live" : "reconnecting";
    s.className = live ? "state-up" : "state-down";
  }
  // The event stream over fetch: its server-sent events are parsed here (comments, `event:`,
  // `data:` and a blank line ending each event), as EventSource would. Whenever it ends (the
  // worker stopped, or cut this page off for falling behind, or a refusal such as 429), the
  // page reconnects after a growing pause and reloads what it shows.
  function connect() {
    var gen = ++stream.gen;
    var headers = { Accept: "text/event-stream" };
    if (token) headers.Authorization = "Bearer " + token;
    fetch("v1/events/stream", { headers: headers, cache: "no-store" }).then(function (res) {
      if (!res.ok || !res.body) {
        return res.json().catch(function () { return null; }).then(function (body) {
          var e = (body && body.error) || {};
          var err = new Error(e.message || ("HTTP " + res.status));
          err.status = res.status;
          throw err;
        });
      }
      setStreamState(true);
      clearError("stream");
      stream.retryMs = 1000;
      // Whatever happened while the stream was down is in the store: reload.
      loadRuns();
      loadCounts();
      if (state.open) loadDetail(state.open);
      var reader = res.body.getReader();
      var decoder = new TextDecoder();
      var rest = "";
      var type = "message";
      var data = [];
      function read() {
        return reader.read().then(function (chunk) {
          if (chunk.done) throw new Error("the stream ended");
          var text = rest + decoder.decode(chunk.value, { stream: true });
          var from = 0;
          var nl;
          while ((nl = text.indexOf("\n", from)) >= 0) {
            var line = text.slice(from, nl);
            from = nl + 1;
            if (line.charAt(line.length - 1) === "\r") line = line.slice(0, -1);
            if (line === "") {
              if (data.length) onStreamMessage({ type: type, data: data.join("\n") });
              type = "message";
              data = [];
            } else if (line.charAt(0) !== ":") {
              var colon = line.indexOf(":");
              var field = colon < 0 ? line : line.slice(0, colon);
              var value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
              if (field === "event") type = value;
              else if (field === "data") data.push(value);
            }
          }
          rest = text.slice(from);
          return read();
        });
      }
      return read();
    }).catch(function (err) {
      if (gen !== stream.gen) return;
      setStreamState(false);
      if (err && err.status) setError("stream", "stream: " + describe(err));
      setTimeout(connect, stream.retryMs);
      stream.retryMs = Math.min(stream.retryMs * 2, 15000);
    });
  }

  var received = 0; // stream events so far; shown as data-events on #stream-state once rendered

  function onStreamMessage(msg) {
    var ev;
    try { ev = JSON.parse(msg.data); } catch (e) { return; }
    if (!ev || typeof ev !== "object" || typeof ev.run_id !== "string") return;
    if (!ev.type) ev.type = msg.type;
    received++;
    if (state.loading) state.loading.push(ev);
    applyEventToRuns(ev);
    if (state.open && state.open.runId === ev.run_id) addLiveDetailEvent(state.open, ev);
    if (typeof ev.seq === "number") requestCounts();
    scheduleRender();
  }

  // --- the runs table -----------------------------------------------------------------------
  var rowEls = new Map();
  var FIELDS = ["run_id", "agent_id", "status", "attempt", "version", "updated_at"];

  function makeRow(id) {
    var tr = el("tr", { "data-run-id": id });
    FIELDS.forEach(function (f) {
      var td = el("td", { "data-field": f });
      if (f === "attempt" || f === "version") td.className = "num";
      tr.appendChild(td);
    });
    var btn = el("button", { type: "button", "class": "run-link", title: "Show run " + id }, id);
    tr.firstChild.appendChild(btn);
    return tr;
  }

  function setCell(tr, field, text, title) {
    var td = tr.querySelector('td[data-field="' + field + '"]');
    if (td.textContent !== text) td.textContent = text;
    if (title !== undefined) td.title = title;
    return td;
  }

  function fillRow(tr, r) {
    var agent = agentOf(r.run_id);
    setCell(tr, "agent_id", agent == null ? (agent === null ? "—" : "…") : agent, agent || "");
    var st = tr.querySelector('td[data-field="status"]');
    if (st.textContent !== r.status) {
      st.textContent = "";
      st.appendChild(badge(r.status));
    }
    setCell(tr, "attempt", r.attempt == null ? "" : String(r.attempt));
    setCell(tr, "version", r.version == null ? "" : String(r.version));
    setCell(tr, "updated_at", fmtShortTime(r.updated_at), r.updated_at || "");
    var selected = state.open && state.open.runId === r.run_id;
    if (selected) tr.setAttribute("aria-current", "true"); else tr.removeAttribute("aria-current");
  }

  function renderRows() {
    prune();
    var list = Array.from(state.runs.values()).filter(matches).sort(newestFirst).slice(0, MAX_ROWS);
    var tbody = $("runs");
    var keep = new Set(list.map(function (r) { return r.run_id; }));
    rowEls.forEach(function (tr, id) {
      if (!keep.has(id)) { tr.remove(); rowEls.delete(id); }
    });
    var prev = null;
    list.forEach(function (r) {
      var tr = rowEls.get(r.run_id);
      if (!tr) { tr = makeRow(r.run_id); rowEls.set(r.run_id, tr); }
      fillRow(tr, r);
      var at = prev ? prev.nextSibling : tbody.firstChild;
      if (at !== tr) tbody.insertBefore(tr, at);
      prev = tr;
    });
    $("runs-empty").hidden = list.length > 0;
    $("runs-shown").textContent = "(" + list.length + " shown)";
  }

  // --- the detail panel ---------------------------------------------------------------------
  function openRun(id) {
    if (state.open && state.open.runId === id) return;
    state.open = { runId: id, snapshot: null, events: new Map(), arrival: 0, buffer: null, gen: 0,
      lastSeq: 0, dirty: true, snapTimer: null };
    $("detail-run-id").textContent = id;
    $("snapshot").textContent = "";
    $("pending-actions").textContent = "";
    $("timeline").textContent = "";
    $("run-detail").hidden = false;
    history.replaceState(null, "", location.pathname + location.search + "#run=" + encodeURIComponent(id));
    loadDetail(state.open);
    scheduleRender();
  }

  function closeRun() {
    if (!state.open) return;
    clearTimeout(state.open.snapTimer);
    state.open = null;
    $("run-detail").hidden = true;
    history.replaceState(null, "", location.pathname + location.search);
    clearError("detail");
    scheduleRender();
  }

  function loadDetail(o) {
    var gen = ++o.gen;
    o.buffer = [];
    var path = "v1/runs/" + encodeURIComponent(o.runId);
    var collected = [];
    function page(after) {
      return api(path + "/events?after_seq=" + after + "&limit=1000").then(function (body) {
        var evs = (body && body.events) || [];
        collected = collected.concat(evs);
        // A page ends at 1000 events or 4 MiB of them; next_after_seq says where the next begins.
        var next = body && body.next_after_seq;
        return typeof next === "number" && next > after ? page(next) : collected;
      });
    }
    return Promise.all([api(path), page(0)]).then(function (res) {
      if (state.open !== o || gen !== o.gen) return;
      var buffered = o.buffer || [];
      o.buffer = null;
      setSnapshot(o, res[0]);
      res[1].concat(buffered).forEach(function (ev) { addDetailEvent(o, ev); });
      clearError("detail");
      scheduleRender();
    }, function (err) {
      if (state.open !== o || gen !== o.gen) return;
      o.buffer = null;
      setError("detail", err && err.code === "run_not_found"
        ? "run " + o.runId + " not found" : "run " + o.runId + ": " + describe(err));
    });
  }

  function setSnapshot(o, s) {
    if (!s || (o.snapshot && typeof s.version === "number" && s.version < o.snapshot.version)) return;
    o.snapshot = s;
    o.dirty = true;
    mergeSnapshot(s);
  }

  function eventKey(ev) {
    if (typeof ev.seq === "number") return "s:" + ev.seq;
    // A repeated command is answered (and may be published) again: one line per command id.
    if (ev.command_id) return "r:" + ev.command_id;
    return "r:" + (ev.event_id || (ev.after_seq + ":" + ev.occurred_at + ":" + ev.command));
  }

  function addDetailEvent(o, ev) {
    var key = eventKey(ev);
    if (o.events.has(key)) return false;
    // Rejections have no seq: they sort right after the event they followed (after_seq).
    var order = typeof ev.seq === "number" ? ev.seq : (Number(ev.after_seq) || 0) + 0.5;
    o.events.set(key, { ev: ev, order: order, arrival: o.arrival++ });
    if (typeof ev.seq === "number" && ev.seq > o.lastSeq) o.lastSeq = ev.seq;
    o.dirty = true;
    return true;
  }

  function addLiveDetailEvent(o, ev) {
    if (o.buffer) { o.buffer.push(ev); return; } // the history is loading; replayed after it
    var gap = typeof ev.seq === "number" && ev.seq > o.lastSeq + 1;
    if (!addDetailEvent(o, ev)) return;
    if (gap) { loadDetail(o); return; } // missed something: the store has it
    // Pending actions, result, error: the snapshot is the authority; fetch it soon.
    clearTimeout(o.snapTimer);
    o.snapTimer = setTimeout(function () {
      api("v1/runs/" + encodeURIComponent(o.runId)).then(function (s) {
        if (state.open === o) { setSnapshot(o, s); scheduleRender(); }
      }, function () {});
    }, 150);
  }

  function addKV(dl, key, value, node) {
    if (value == null || value === "") return;
    dl.appendChild(el("dt", null, key));
    var dd = el("dd", { "data-field": key });
    if (node) dd.appendChild(node); else dd.textContent = String(value);
    dl.appendChild(dd);
  }

  function renderDetail() {
    var o = state.open;
    if (!o || !o.dirty) return;
    o.dirty = false;
    var s = o.snapshot;

    var dl = $("snapshot");
    dl.textContent = "";
    if (s) {
      addKV(dl, "status", s.status, badge(s.status));
      addKV(dl, "agent", s.agent_id);
      addKV(dl, "attempt", s.attempt);
      addKV(dl, "version", s.version);
      addKV(dl, "stop_reason", s.stop_reason);
      addKV(dl, "error", fmtError(s.error));
      addKV(dl, "created", fmtTime(s.created_at));
      addKV(dl, "started", fmtTime(s.started_at));
      addKV(dl, "updated", fmtTime(s.updated_at));
      addKV(dl, "completed", fmtTime(s.completed_at));
      addKV(dl, "next attempt", fmtTime(s.next_attempt_at));
      addKV(dl, "previous run", s.previous_run_id);
      if (s.input != null) addKV(dl, "input", true, el("pre", null, fmtJSON(s.input)));
      if (s.result != null) addKV(dl, "result", true, el("pre", null, fmtJSON(s.result)));
    }

    var ul = $("pending-actions");
    ul.textContent = "";
    var pending = (s && s.pending_actions) || [];
    if (pending.length === 0) ul.appendChild(el("li", { "class": "none" }, "none"));
    pending.forEach(function (a) {
      var li = el("li", { "data-action-id": a.id });
      li.appendChild(el("code", null, a.id));
      li.appendChild(document.createTextNode(" " + actionSummary(a)));
      var deadline = a.deadline_at || a.deadline; // deadline_at per the contract; deadline per the API draft
      var since = a.requested_at || a.required_at;
      var when = el("span", { "class": "when", "data-field": "deadline" },
        deadline ? "deadline " + fmtTime(deadline) : "no deadline");
      li.appendChild(document.createTextNode(" · "));
      li.appendChild(when);
      if (since) li.appendChild(el("span", { "class": "since" }, " · requested " + fmtTime(since)));
      ul.appendChild(li);
    });

    var ol = $("timeline");
    ol.textContent = "";
    Array.from(o.events.values())
      .sort(function (a, b) { return a.order - b.order || a.arrival - b.arrival; })
      .forEach(function (item) { ol.appendChild(timelineItem(item.ev)); });
  }

  function actionSummary(a) {
    var what = a.tool || a.recipient || a.action || "";
    return (a.type || "action") + (what ? " · " + what : "");
  }

  function timelineItem(ev) {
    var rejected = typeof ev.seq !== "number";
    var li = el("li", {
      "data-seq": rejected ? null : String(ev.seq),
      "data-after-seq": rejected && ev.after_seq != null ? String(ev.after_seq) : null,
      "data-type": ev.type,
      "class": "ev ev-" + ev.type,
    });
    var head = el("div", { "class": "ev-head" });
    head.appendChild(el("span", { "class": "seq" }, rejected ? "—" : "#" + ev.seq));
    head.appendChild(el("strong", { "class": "type" }, ev.type));
    head.appendChild(el("time", { datetime: ev.occurred_at || null }, fmtTime(ev.occurred_at)));
    li.appendChild(head);

    var facts = el("div", { "class": "ev-facts" });
    function fact(field, text) {
      if (text == null || text === "") return;
      facts.appendChild(el("span", { "data-field": field }, text));
    }
    if (!rejected) {
      fact("status", (ev.previous_status ? ev.previous_status + " → " : "") + ev.status);
      fact("attempt", "attempt " + ev.attempt);
    } else {
      fact("command", "command " + (ev.command || "?") + (ev.after_seq != null ? " after #" + ev.after_seq : ""));
    }
    if (ev.action) {
      fact("action", "action " + ev.action.id + " · " + actionSummary(ev.action) +
        (ev.action.deadline_at ? " · deadline " + fmtTime(ev.action.deadline_at) : ""));
    }
    var error = ev.error || (ev.action && ev.action.error);
    if (error) fact("error", fmtError(error));
    if (ev.stop_reason) fact("stop_reason", "stop: " + ev.stop_reason);
    if (ev.reason) fact("reason", "reason: " + ev.reason);
    if (ev.next_attempt_at) fact("next_attempt_at", "next attempt " + fmtTime(ev.next_attempt_at));
    if (ev.stopped_action_ids && ev.stopped_action_ids.length) {
      fact("stopped_action_ids", "stopped " + ev.stopped_action_ids.join(", "));
    }
    if (ev.command_id) fact("command_id", "command id " + ev.command_id);
    li.appendChild(facts);
    return li;
  }

  // --- rendering, batched -------------------------------------------------------------------
  var renderPending = false;
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    // A timer, not requestAnimationFrame: a background tab keeps up (at a slower pace).
    setTimeout(function () {
      renderPending = false;
      var seen = received;
      renderRows();
      renderDetail();
      // For tests and the curious: the page shows the effect of this many stream events.
      $("stream-state").setAttribute("data-events", String(seen));
    }, 30);
  }

  // --- controls -----------------------------------------------------------------------------
  function applyFilters() {
    state.filter.status = $("status-filter").value;
    state.filter.agent = $("agent-filter").value.trim();
    scheduleRender(); // narrow at once with what is known, then ask the server
    loadRuns();
  }

  function setup() {
    var agentTimer = null;
    $("status-filter").addEventListener("change", applyFilters);
    $("agent-filter").addEventListener("input", function () {
      clearTimeout(agentTimer);
      agentTimer = setTimeout(applyFilters, 250);
    });
    $("filters").addEventListener("submit", function (e) {
      e.preventDefault();
      clearTimeout(agentTimer);
      applyFilters();
    });
    $("counts").addEventListener("click", function (e) {
      var b = e.target.closest("button[data-status]");
      if (!b) return;
      $("status-filter").value = b.getAttribute("data-status");
      applyFilters();
    });
    $("runs").addEventListener("click", function (e) {
      var tr = e.target.closest("tr[data-run-id]");
      if (tr) openRun(tr.getAttribute("data-run-id"));
    });
    $("detail-close").addEventListener("click", closeRun);
    document.addEventListener("keydown", function (e) {
      if (e.key === "Escape" && state.open) closeRun();
    });

    setStreamState(false);
    connect();
    loadRuns();
    loadCounts();
    var run = new URLSearchParams(location.hash.replace(/^#/, "")).get("run");
    if (run) openRun(run);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
})();
