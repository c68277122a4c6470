/* hetfaas dashboard: plain JavaScript, no library, no network but this gateway.
 *
 * The token comes from the URL fragment (#token=...: never sent to the server) or the login
 * form, and stays in this tab's sessionStorage. Every panel polls its JSON route under
 * /v1/dashboard/ with "Authorization: Bearer <token>". The task stream and the charts are
 * drawn on <canvas>: the page has a bounded number of DOM nodes whatever the number of calls.
 *
 * window.hetfaas.state holds what the panels last received (tests and the console read it).
 */
(function () {
  "use strict";

  var TOKEN_KEY = "hetfaas.dashboard.token";
  var WINDOW_KEY = "hetfaas.dashboard.window";
  var RESOURCE_KEEP = 3600; // samples kept here (the server's ring is as long)
  var RESOURCE_SHOWN_S = 600; // the charts show the last 10 minutes
  var MAX_TABLE_ROWS = 64;
  var MAX_LEGEND = 16;
  var PHASE_STYLE = {
    gateway_queue: { label: "gateway queue", color: "#9ca3af", thin: true },
    queue: { label: "executor queue", color: "#6b7280", thin: true },
    cold_start: { label: "cold start", color: "#374151" },
    transfer_in: { label: "transfer", color: null, alpha: 0.45 },
    compute: { label: "compute", color: null, alpha: 1 },
    transfer_out: { label: "transfer", color: null, alpha: 0.45 },
    running: { label: "running", color: null, alpha: 0.35 },
  };

  var H = {
    state: {
      summary: null, workers: null, queue: null, stream: null, batches: null,
      serving: null, detail: null,
      resources: { t: [] },
    },
    polls: {}, errors: {}, paused: false, started: false, draws: 0,
  };
  window.hetfaas = H;

  var token = null;
  var timers = {};
  var hits = []; // [x0, x1, y0, y1, task] of the stream's last drawing

  // ------------------------------------------------------------------ helpers

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === "text") e.textContent = attrs[k];
        else if (k === "cls") e.className = attrs[k];
        else if (k === "style") setStyle(e, attrs[k]);
        else e.setAttribute(k, attrs[k]);
      });
    }
    (children || []).forEach(function (c) {
      if (c == null) return;
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }

  // "a:b;c:d" through the CSSOM: the page's CSP refuses inline style attributes
  function setStyle(e, text) {
    String(text).split(";").forEach(function (decl) {
      var i = decl.indexOf(":");
      if (i > 0) e.style.setProperty(decl.slice(0, i).trim(), decl.slice(i + 1).trim());
    });
  }

  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }

  function fmtNum(n) {
    if (n == null) return "–";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
    if (Math.abs(n) >= 100) return String(Math.round(n));
    return String(Math.round(n * 10) / 10);
  }

  function fmtS(s) {
    if (s == null) return "–";
    if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
    if (s < 1) return (s * 1e3).toFixed(1) + " ms";
    if (s < 120) return s.toFixed(2) + " s";
    return (s / 60).toFixed(1) + " min";
  }

  function fmtBytes(b) {
    if (b == null) return "–";
    if (b >= 1 << 30) return (b / (1 << 30)).toFixed(1) + " GiB";
    if (b >= 1 << 20) return (b / (1 << 20)).toFixed(1) + " MiB";
    if (b >= 1 << 10) return (b / (1 << 10)).toFixed(1) + " KiB";
    return b + " B";
  }

  function ago(t, now) {
    if (t == null) return "never";
    return fmtS(Math.max(0, now - t)) + " ago";
  }

  // a function's colour: the next of a distinct palette the first time it is seen (so it
  // stays the same while the page is open), then hues from its name
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
    "#ff9da7", "#9c755f", "#17becf"];
  var colorCache = {}, colorsUsed = 0;
  function fnColor(name) {
    var c = colorCache[name];
    if (c) return c;
    if (colorsUsed < PALETTE.length) {
      c = PALETTE[colorsUsed++];
    } else {
      var h = 0;
      for (var i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
      c = "hsl(" + ((h * 137.508) % 360).toFixed(0) + ", 62%, 48%)";
    }
    colorCache[name] = c;
    return c;
  }

  function setStatus(state, text) {
    var s = $("status");
    s.setAttribute("data-state", state);
    s.textContent = text;
  }

  // A canvas sized to its box and the device's pixels; its 2D context in CSS pixels.
  function prepare(canvas) {
    var dpr = window.devicePixelRatio || 1;
    var h = Number(canvas.getAttribute("data-height")) || 100;
    if (canvas.style.height !== h + "px") canvas.style.height = h + "px";
    var w = canvas.clientWidth || canvas.parentNode.clientWidth || 300;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    return { ctx: ctx, w: w, h: h };
  }

  // ------------------------------------------------------------------ token and requests

  function readToken() {
    var hash = window.location.hash || "";
    if (hash.length > 1) {
      var params = new URLSearchParams(hash.slice(1));
      var t = params.get("token");
      var win = params.get("window");
      if (win) sessionStorage.setItem(WINDOW_KEY, win);
      if (t) {
        sessionStorage.setItem(TOKEN_KEY, t);
        // out of the address bar (and of screenshots, bookmarks and history)
        history.replaceState(null, "", window.location.pathname + window.location.search);
      }
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function showLogin(why) {
    stopPolls();
    H.started = false;
    $("login").hidden = false;
    if (why) $("login-why").textContent = why;
    $("login-token").focus();
    setStatus("error", "no token");
  }

  function api(path) {
    return fetch(path, {
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    }).then(function (resp) {
      if (resp.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        token = null;
        showLogin("The token was refused (missing, unknown or revoked). Paste another one.");
        throw new Error("unauthorized");
      }
      if (!resp.ok) {
        return resp.text().then(function (body) {
          var err = new Error("HTTP " + resp.status + ": " + body.slice(0, 200));
          err.status = resp.status;
          throw err;
        });
      }
      return resp.json();
    });
  }

  // ------------------------------------------------------------------ polling

  var POLLS = {
    summary: { every: 10, path: function () { return "/v1/dashboard/summary"; }, draw: drawSummary },
    stream: {
      every: 1,
      path: function () { return "/v1/dashboard/stream?window=" + windowS(); },
      draw: drawStream,
    },
    queue: { every: 1, path: function () { return "/v1/dashboard/queue"; }, draw: drawQueue },
    resources: {
      every: 1,
      path: function () {
        var t = H.state.resources.t;
        return "/v1/dashboard/resources?after=" + (t.length ? t[t.length - 1] : 0);
      },
      draw: mergeResources,
    },
    workers: { every: 2, path: function () { return "/v1/dashboard/workers"; }, draw: drawWorkers },
    batches: { every: 2, path: function () { return "/v1/dashboard/batches"; }, draw: drawBatches },
    serving: { every: 5, path: function () { return "/v1/dashboard/serving"; }, draw: drawServing },
  };

  function windowS() { return Number($("window").value) || 60; }

  function poll(name) {
    var p = POLLS[name];
    timers[name] = null;
    if (!token || H.paused) return;
    api(p.path()).then(function (body) {
      H.polls[name] = (H.polls[name] || 0) + 1;
      delete H.errors[name];
      p.draw(body);
      setStatus(Object.keys(H.errors).length ? "error" : "live",
        Object.keys(H.errors).length ? "errors: " + Object.keys(H.errors).join(", ") : "live");
      schedule(name, p.every);
    }).catch(function (err) {
      if (err.message === "unauthorized") return;
      H.errors[name] = String(err.message || err);
      setStatus("error", "errors: " + Object.keys(H.errors).join(", "));
      schedule(name, err.status === 429 ? p.every * 4 : p.every * 2);
    });
  }

  function schedule(name, seconds) {
    if (timers[name] || !token || H.paused) return;
    timers[name] = setTimeout(function () { poll(name); }, seconds * 1000);
  }

  function startPolls() {
    H.started = true;
    Object.keys(POLLS).forEach(function (name) { if (!timers[name]) poll(name); });
  }

  function stopPolls() {
    Object.keys(timers).forEach(function (name) {
      if (timers[name]) clearTimeout(timers[name]);
      timers[name] = null;
    });
  }

  // ------------------------------------------------------------------ summary

  function drawSummary(body) {
    H.state.summary = body;
    $("namespace").textContent = "namespace " + body.namespace + " · " +
      body.functions.length + " function" + (body.functions.length === 1 ? "" : "s");
  }

  // ------------------------------------------------------------------ task stream

  function drawStream(body) {
    var t0 = performance.now();
    H.state.stream = body;
    var canvas = $("stream");
    var lanes = body.lanes;
    var nl = Math.max(1, lanes.length);
    var laneH = Math.max(3, Math.min(34, Math.floor(270 / nl)));
    canvas.setAttribute("data-height", String(Math.max(80, nl * laneH + 24)));
    var c = prepare(canvas);
    var ctx = c.ctx;
    var left = 120, right = c.w - 6, top = 2, axisY = top + nl * laneH;
    var span = body.until - body.since;
    var scale = (right - left) / span;
    function X(s) { return left + s * scale; }

    // lanes
    ctx.textBaseline = "middle";
    for (var i = 0; i < lanes.length; i++) {
      var y = top + i * laneH;
      if (i % 2 === 0) { ctx.fillStyle = "#f9fafb"; ctx.fillRect(left, y, right - left, laneH); }
      if (laneH >= 9) {
        ctx.fillStyle = "#374151";
        ctx.fillText(lanes[i].label.slice(0, 20), 4, y + laneH / 2);
      }
    }
    // tasks
    hits = [];
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, 0, right - left, axisY);
    ctx.clip();
    body.tasks.forEach(function (task) {
      var fn = body.functions[task.f];
      var color = fnColor(fn);
      var y0 = top + task.l * laneH;
      var x0 = Infinity, x1 = -Infinity;
      task.g.forEach(function (seg) {
        var kind = body.phases[seg[0]];
        var st = PHASE_STYLE[kind] || { color: "#000" };
        var sx = X(seg[1]);
        var sw = Math.max(1, seg[2] * scale);
        if (sx > right || sx + sw < left) return;
        ctx.globalAlpha = st.alpha == null ? 1 : st.alpha;
        ctx.fillStyle = st.color || color;
        if (st.thin) {
          ctx.fillRect(sx, y0 + laneH / 2 - 0.5, sw, 1);
        } else {
          ctx.fillRect(sx, y0 + 1, sw, Math.max(1, laneH - 2));
          x0 = Math.min(x0, sx);
          x1 = Math.max(x1, sx + sw);
        }
      });
      if (task.s === "FAILED" && x1 > x0) {
        ctx.globalAlpha = 1;
        ctx.fillStyle = "#dc2626";
        ctx.fillRect(x1 - 2, y0 + 1, 2, Math.max(1, laneH - 2));
      }
      if (x1 > x0) hits.push([x0 - 1, x1 + 1, y0, y0 + laneH, task]);
    });
    ctx.restore();
    ctx.globalAlpha = 1;
    // time axis: seconds before the window's end
    ctx.strokeStyle = "#d1d5db";
    ctx.beginPath();
    ctx.moveTo(left, axisY + 0.5);
    ctx.lineTo(right, axisY + 0.5);
    ctx.stroke();
    ctx.fillStyle = "#6b7280";
    ctx.textBaseline = "top";
    var step = niceStep(span / 6);
    for (var s = 0; s <= span + 1e-9; s += step) {
      var x = X(span - s);
      ctx.fillRect(x, axisY, 1, 4);
      var label = s === 0 ? "now" : "-" + fmtS(s);
      ctx.fillText(label, Math.max(left, Math.min(x - 12, right - 40)), axisY + 6);
    }
    if (!body.tasks.length) {
      ctx.fillStyle = "#9ca3af";
      ctx.textBaseline = "middle";
      ctx.fillText("no invocation ended in this window", left + 10, top + (axisY - top) / 2);
    }
    var shown = $("stream-shown");
    var running = sum(Object.values(body.open.RUNNING || {}));
    var queued = sum(Object.values(body.open.QUEUED || {}));
    shown.textContent = body.shown + " tasks shown · " + body.ended + " ended in " +
      fmtS(span) + " · " + running + " running · " + queued + " queued";
    shown.setAttribute("data-shown", String(body.shown));
    shown.setAttribute("data-ended", String(body.ended));
    drawLegend(body);
    drawThroughput(body);
    H.draws++;
    H.lastDrawMs = performance.now() - t0;
  }

  function sum(xs) { return xs.reduce(function (a, b) { return a + b; }, 0); }

  function niceStep(raw) {
    var steps = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60,
      120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400];
    for (var i = 0; i < steps.length; i++) if (steps[i] >= raw) return steps[i];
    return steps[steps.length - 1];
  }

  function drawLegend(body) {
    var legend = clear($("legend"));
    body.functions.slice(0, MAX_LEGEND).forEach(function (fn) {
      legend.appendChild(el("span", { cls: "key", "data-function": fn }, [
        el("span", { cls: "sw", style: "background:" + fnColor(fn) }),
        fn + " " + fmtNum(body.totals[fn] || 0),
      ]));
    });
    if (body.functions.length > MAX_LEGEND) {
      legend.appendChild(el("span", { cls: "muted", text: "+" +
        (body.functions.length - MAX_LEGEND) + " more" }));
    }
    [["compute (solid)", "#6b7280", 1], ["transfer (light)", "#6b7280", 0.45],
      ["cold start", "#374151", 1], ["queue", "#9ca3af", 1]].forEach(function (p) {
      legend.appendChild(el("span", { cls: "key phase" }, [
        el("span", { cls: "sw", style: "background:" + p[1] + ";opacity:" + p[2] +
          (p[0] === "queue" ? ";height:2px" : "") }), p[0],
      ]));
    });
  }

  function drawThroughput(body) {
    var c = prepare($("throughput"));
    var ctx = c.ctx;
    var b = body.buckets;
    var left = 120, right = c.w - 6, bottom = c.h - 12;
    var n = b.n, totals = new Array(n).fill(0);
    body.functions.forEach(function (fn) {
      var counts = b.counts[fn] || [];
      for (var i = 0; i < n; i++) totals[i] += counts[i] || 0;
    });
    var max = Math.max(1, Math.max.apply(null, totals));
    var bw = (right - left) / n;
    var base = new Array(n).fill(0);
    body.functions.forEach(function (fn) {
      var counts = b.counts[fn] || [];
      ctx.fillStyle = fnColor(fn);
      for (var i = 0; i < n; i++) {
        if (!counts[i]) continue;
        var h = (counts[i] / max) * (bottom - 4);
        ctx.fillRect(left + i * bw, bottom - base[i] - h, Math.max(1, bw - 1), h);
        base[i] += h;
      }
    });
    ctx.fillStyle = "#6b7280";
    ctx.textBaseline = "top";
    ctx.fillText("ended per " + fmtS(b.width_s), 4, 2);
    ctx.fillText("max " + fmtNum(max), 4, 16);
    ctx.fillStyle = "#d1d5db";
    ctx.fillRect(left, bottom, right - left, 1);
  }

  function taskAt(ev) {
    var r = $("stream").getBoundingClientRect();
    var x = ev.clientX - r.left, y = ev.clientY - r.top;
    for (var i = hits.length - 1; i >= 0; i--) {
      var h = hits[i];
      if (x >= h[0] && x <= h[1] && y >= h[2] && y <= h[3]) return { task: h[4], x: x, y: y };
    }
    return null;
  }

  function onStreamMove(ev) {
    var tip = $("tooltip");
    var hit = taskAt(ev);
    var body = H.state.stream;
    if (!hit || !body) { tip.hidden = true; return; }
    var t = hit.task;
    var lines = [body.functions[t.f] + " · " + t.s, t.id];
    t.g.forEach(function (seg) { lines.push(body.phases[seg[0]] + " " + fmtS(seg[2])); });
    if (t.b) lines.push("batch " + t.b);
    tip.textContent = lines.join("\n");
    tip.hidden = false;
    tip.style.left = Math.min(hit.x + 12, $("stream").clientWidth - 220) + "px";
    tip.style.top = hit.y + 12 + "px";
  }

  function onStreamClick(ev) {
    var hit = taskAt(ev);
    if (hit) openDetail(hit.task.id);
  }

  // ------------------------------------------------------------------ queue and workers

  function number(value, key) {
    return el("div", { cls: "n" }, [
      el("div", { cls: "v", text: value == null ? "–" : String(value) }),
      el("div", { cls: "k", text: key }),
    ]);
  }

  function drawQueue(body) {
    H.state.queue = body;
    var g = body.gateway, x = body.executor || {}, mine = body.namespace;
    var box = clear($("queue-numbers"));
    box.appendChild(number(g.queued, "gateway queued"));
    box.appendChild(number(g.inflight + " / " + g.max_inflight, "gateway in flight"));
    box.appendChild(number(x.queued, "executor queued"));
    box.appendChild(number(x.running, "executor running"));
    box.appendChild(number(mine.QUEUED, "yours queued"));
    box.appendChild(number(mine.RUNNING, "yours running"));
    var hist = body.history;
    lineChart($("queue-chart"), hist.t, [
      { name: "queued", values: hist.gateway_queued, color: "#d97706" },
      { name: "in flight", values: hist.gateway_inflight, color: "#2563eb" },
      { name: "running", values: hist.executor_running, color: "#16a34a" },
    ], { min: 0, integer: true, span: 300 });
  }

  function drawWorkers(body) {
    H.state.workers = body;
    var cap = body.capacity || {};
    var m = body.machine || {};
    var st = body.stats || {};
    $("workers-line").textContent = body.backend + " · " + (cap.cpus || "?") + " cores, " +
      (cap.gpus || 0) + " GPUs, ≤ " + (cap.max_workers || "?") + " workers · " +
      (st.workers_busy || 0) + " busy, " + (st.workers_idle || 0) + " idle" +
      (st.workers_starting ? ", " + st.workers_starting + " starting" : "") +
      (m.cpu_model ? " · " + m.cpu_model : "");
    var now = Date.now() / 1000;
    var slots = clear($("slots"));
    body.cores.slice(0, 256).forEach(function (s) {
      var recent = s.last_at != null && now - s.last_at < 10;
      slots.appendChild(el("span", {
        cls: "slot", "data-core": s.id,
        style: s.last_function ? "background:" + fnColor(s.last_function) + ";opacity:" +
          (recent ? 1 : 0.35) : "",
        title: "core " + s.id + ": " + s.calls + " recent calls, last " +
          (s.last_function || "none") + " " + ago(s.last_at, now),
        text: String(s.id),
      }));
    });
    body.gpus.forEach(function (s) {
      slots.appendChild(el("span", {
        cls: "slot gpu", "data-gpu": s.id,
        style: s.last_function ? "background:" + fnColor(s.last_function) : "",
        title: "GPU " + s.id + " " + (s.name || "") + ": " + s.calls + " recent calls, last " +
          (s.last_function || "none") + " " + ago(s.last_at, now),
        text: "G" + s.id,
      }));
    });
    var rows = body.workers.slice(0, MAX_TABLE_ROWS).map(function (w) {
      return el("tr", {}, [
        el("td", { text: String(w.worker) }),
        el("td", { text: String(w.pid) + (w.alive === false ? " (gone)" : "") }),
        el("td", { text: w.cpus.join(",") || "–" }),
        el("td", { text: w.gpus.join(",") || "–" }),
        el("td", { cls: "num", text: String(w.calls) }),
        el("td", { cls: "num", text: fmtS(w.compute_s) }),
        el("td", { text: (w.last_function || "") + " " + ago(w.last_at, now) }),
      ]);
    });
    var box = clear($("workers"));
    if (!body.workers.length) {
      box.appendChild(el("div", { cls: "empty", text: "no call of this namespace ran in the " +
        "last hour" + (body.live_workers ? " (" + body.live_workers + " workers alive)" : "") }));
      return;
    }
    box.appendChild(el("table", {}, [
      el("thead", {}, [el("tr", {}, ["worker", "pid", "cores", "GPUs", "calls", "compute",
        "last"].map(function (h) { return el("th", { text: h }); }))]),
      el("tbody", {}, rows),
    ]));
    if (body.workers.length > MAX_TABLE_ROWS) {
      box.appendChild(el("div", { cls: "muted", text: "+" +
        (body.workers.length - MAX_TABLE_ROWS) + " more workers" }));
    }
  }

  // ------------------------------------------------------------------ batches, serving

  function drawBatches(body) {
    H.state.batches = body;
    var box = clear($("batches"));
    if (!body.batches.length) {
      box.appendChild(el("div", { cls: "empty", text: "no batch in the last day" }));
      return;
    }
    var rows = body.batches.map(function (b) {
      var pct = function (n) { return (100 * n / Math.max(1, b.total)).toFixed(2) + "%"; };
      var bar = el("div", { cls: "bar", title: (100 * b.progress).toFixed(1) + "% ended" }, [
        el("span", { cls: "ok", style: "left:0;width:" + pct(b.completed) }),
        el("span", { cls: "bad", style: "left:" + pct(b.completed) + ";width:" +
          pct(b.failed + b.cancelled) }),
        el("span", { cls: "run", style: "left:" + pct(b.ended) + ";width:" + pct(b.running) }),
      ]);
      return el("tr", { "data-batch": b.batch }, [
        el("td", { text: b.batch.slice(-10), title: b.batch }),
        el("td", { text: b.function }),
        el("td", {}, [bar]),
        el("td", { cls: "num", text: b.ended + " / " + b.total }),
        el("td", { cls: "num", text: String(b.failed) }),
        el("td", { cls: "num", text: fmtS(b.elapsed_s) }),
        el("td", { text: b.finished_at ? "done" : b.running ? "running" : "queued" }),
      ]);
    });
    box.appendChild(el("table", {}, [
      el("thead", {}, [el("tr", {}, ["batch", "function", "progress", "ended", "failed",
        "elapsed", ""].map(function (h) { return el("th", { text: h }); }))]),
      el("tbody", {}, rows),
    ]));
  }

  function drawServing(body) {
    H.state.serving = body;
    var box = clear($("serving"));
    if (!body.runtimes.length) {
      box.appendChild(el("div", { cls: "empty", text: "no serving runtime" }));
      return;
    }
    body.runtimes.forEach(function (rt, i) {
      box.appendChild(el("div", { cls: "muted", text: "runtime " + i + " · policy " +
        (rt.policy || "?") + " · " + rt.requests + " requests · miss ratio " +
        (rt.summary.miss_ratio == null ? "–" : rt.summary.miss_ratio.toFixed(2)) }));
      rt.devices.forEach(function (d) {
        var used = d.used_bytes / Math.max(1, d.memory_bytes);
        box.appendChild(el("div", { cls: "device" }, [
          el("div", { text: d.device + " (node " + d.node + ")" + (d.busy ? " · busy" : "") +
            " · " + fmtBytes(d.used_bytes) + " of " + fmtBytes(d.memory_bytes) }),
          el("div", { cls: "bar", style: "width:100%" }, [
            el("span", { cls: "run", style: "left:0;width:" + (100 * used).toFixed(1) + "%" }),
          ]),
          el("div", { cls: "muted", text: d.models.length ? d.models.map(function (m) {
            return m.name + " " + fmtBytes(m.bytes);
          }).join(", ") : "no model resident" }),
        ]));
      });
    });
  }

  // ------------------------------------------------------------------ resources

  function mergeResources(body) {
    var r = H.state.resources;
    var cols = body.columns;
    cols.forEach(function (c) {
      if (!r[c]) r[c] = [];
      Array.prototype.push.apply(r[c], body.samples[c] || []);
      if (r[c].length > RESOURCE_KEEP) r[c].splice(0, r[c].length - RESOURCE_KEEP);
    });
    r.meta = { cpu_count: body.cpu_count, memory_total_mb: body.memory_total_mb,
      gpu_count: body.gpu_count, gpu_names: body.gpu_names, interval_s: body.interval_s };
    drawResources();
  }

  function drawResources() {
    var r = H.state.resources;
    var meta = r.meta || {};
    lineChart($("chart-cpu"), r.t, [
      { name: "machine", values: r.machine_cpu_percent, color: "#2563eb" },
      { name: "hetfaas", color: "#d97706",
        values: (r.cpu_percent || []).map(function (v) {
          return v == null ? null : v / Math.max(1, meta.cpu_count || 1);
        }) },
    ], { min: 0, max: 100, span: RESOURCE_SHOWN_S });
    lineChart($("chart-mem"), r.t, [
      { name: "machine", values: r.machine_mem_mb, color: "#2563eb" },
      { name: "hetfaas", values: r.rss_mb, color: "#d97706" },
    ], { min: 0, span: RESOURCE_SHOWN_S });
    var noGpu = !meta.gpu_count ? "no GPU seen by the monitor" : null;
    lineChart($("chart-gpu"), r.t, [
      { name: "utilisation", values: r.gpu_util_percent, color: "#16a34a" },
    ], { min: 0, max: 100, span: RESOURCE_SHOWN_S, empty: noGpu });
    lineChart($("chart-gpumem"), r.t, [
      { name: "used", values: r.gpu_mem_mb, color: "#7c3aed" },
    ], { min: 0, span: RESOURCE_SHOWN_S, empty: noGpu });
  }

  // A line chart of series over t (Unix s), the last opts.span seconds.
  function lineChart(canvas, t, series, opts) {
    var c = prepare(canvas);
    var ctx = c.ctx;
    var left = 36, right = c.w - 4, top = 20, bottom = c.h - 14;
    t = t || [];
    var end = t.length ? t[t.length - 1] : Date.now() / 1000;
    var first = t.length ? t[0] : end;
    var start = Math.max(end - (opts.span || 600), Math.min(first, end - 30));
    var i0 = 0;
    while (i0 < t.length && t[i0] < start) i0++;
    var max = opts.max || 0, any = false;
    series.forEach(function (s) {
      for (var i = i0; i < t.length; i++) {
        var v = s.values ? s.values[i] : null;
        if (v != null) { any = true; if (!opts.max && v > max) max = v; }
      }
    });
    if (!opts.max) max = max > 0 ? max * 1.15 : 1;
    if (opts.integer) max = Math.max(1, Math.ceil(max));
    var min = opts.min || 0;
    function X(tt) { return left + (tt - start) / (end - start || 1) * (right - left); }
    function Y(v) { return bottom - (v - min) / (max - min || 1) * (bottom - top); }
    ctx.strokeStyle = "#e5e7eb";
    ctx.fillStyle = "#6b7280";
    ctx.textBaseline = "middle";
    [0, 0.5, 1].forEach(function (f) {
      var v = min + f * (max - min);
      var y = Y(v);
      ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(right, y + 0.5); ctx.stroke();
      ctx.fillText(fmtNum(opts.integer ? Math.round(v) : v), 2, y);
    });
    if (!any) {
      ctx.fillStyle = "#9ca3af";
      ctx.fillText(opts.empty || "waiting for samples", left + 6, (top + bottom) / 2);
      return;
    }
    series.forEach(function (s) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      var pen = false;
      for (var i = i0; i < t.length; i++) {
        var v = s.values ? s.values[i] : null;
        if (v == null) { pen = false; continue; }
        if (!pen) { ctx.moveTo(X(t[i]), Y(v)); pen = true; } else ctx.lineTo(X(t[i]), Y(v));
      }
      ctx.stroke();
    });
    ctx.lineWidth = 1;
    var x = left;
    ctx.textBaseline = "top";
    series.forEach(function (s) {
      var last = null;
      for (var i = t.length - 1; i >= i0 && last == null; i--) last = s.values ? s.values[i] : null;
      var label = s.name + " " + fmtNum(last);
      ctx.fillStyle = s.color;
      ctx.fillRect(x, 3, 8, 8);
      ctx.fillStyle = "#374151";
      ctx.fillText(label, x + 11, 1);
      x += ctx.measureText(label).width + 22;
    });
    ctx.fillStyle = "#9ca3af";
    ctx.fillText("-" + fmtS(end - start), left, bottom + 2);
    ctx.fillText("now", right - 22, bottom + 2);
  }

  // ------------------------------------------------------------------ invocation detail

  function openDetail(id) {
    api("/v1/dashboard/invocations/" + encodeURIComponent(id)).then(function (rec) {
      H.state.detail = rec;
      drawDetail(rec);
    }).catch(function (err) {
      if (err.message !== "unauthorized") H.errors.detail = String(err.message || err);
    });
  }

  function kv(rows) {
    return el("table", {}, [el("tbody", {}, rows.map(function (r) {
      return el("tr", {}, [el("th", { text: r[0] }), el("td", { text: r[1] == null ? "–" :
        String(r[1]) })]);
    }))]);
  }

  function drawDetail(rec) {
    var body = clear($("detail-body"));
    body.appendChild(el("h2", {}, [rec["function"] + " ", el("span", {
      cls: "state-" + rec.state, text: rec.state })]));
    body.appendChild(kv([
      ["id", rec.id], ["batch", rec.batch], ["ran on", rec.lane], ["attempts", rec.attempts],
      ["submitted", rec.submitted_at], ["dispatched", rec.dispatched_at],
      ["started", rec.started_at], ["finished", rec.finished_at],
      ["gateway queue", rec.gateway.queue_ms == null ? null : rec.gateway.queue_ms + " ms"],
      ["gateway total", rec.gateway.total_ms == null ? null : rec.gateway.total_ms + " ms"],
    ]));
    var total = rec.phases.reduce(function (a, p) { return a + p.seconds; }, 0) || 1;
    var bar = el("div", { cls: "phasebar", id: "detail-phases" });
    var color = fnColor(rec["function"]);
    rec.phases.forEach(function (p) {
      var st = PHASE_STYLE[p.phase] || {};
      bar.appendChild(el("span", {
        title: p.phase + " " + fmtS(p.seconds),
        style: "width:" + (100 * p.seconds / total).toFixed(2) + "%;background:" +
          (st.color || color) + ";opacity:" + (st.alpha == null ? 1 : st.alpha),
      }));
    });
    body.appendChild(el("h3", { text: "phases" }));
    body.appendChild(bar);
    body.appendChild(kv(rec.phases.map(function (p) { return [p.phase, fmtS(p.seconds)]; })));
    if (rec.timings) {
      var t = rec.timings;
      body.appendChild(el("h3", { text: "timings (executor)" }));
      body.appendChild(kv([
        ["worker", t.worker], ["pid", t.pid], ["cores", (t.cpus || []).join(",")],
        ["GPUs", (t.gpus || []).join(",")], ["backend", t.backend],
        ["total", fmtS(t.total_us / 1e6)], ["compute", fmtS(t.compute_us / 1e6)],
        ["chunk", t.chunk ? "item " + t.chunk.index + " of " + t.chunk.size : null],
      ]));
    }
    if (rec.usage) {
      var u = rec.usage;
      body.appendChild(el("h3", { text: "usage" }));
      body.appendChild(kv(Object.keys(u).filter(function (k) {
        return typeof u[k] !== "object" || u[k] === null;
      }).map(function (k) {
        var v = u[k];
        return [k, typeof v === "number" && !Number.isInteger(v) ? Number(v.toPrecision(4)) : v];
      })));
    }
    if (rec.error) {
      body.appendChild(el("h3", { text: "error" }));
      body.appendChild(el("pre", { cls: "error", text: rec.error.type + ": " + rec.error.message +
        (rec.error.traceback ? "\n\n" + rec.error.traceback : "") }));
    }
    [["stdout", rec.stdout], ["stderr", rec.stderr]].forEach(function (p) {
      if (!p[1]) return;
      body.appendChild(el("h3", { text: p[0] }));
      body.appendChild(el("pre", { text: p[1] }));
    });
    if (rec.result_preview != null) {
      body.appendChild(el("h3", { text: "result" + (rec.result_truncated ? " (head)" : "") }));
      body.appendChild(el("pre", { text: rec.result_preview }));
    }
    $("detail").hidden = false;
  }

  // ------------------------------------------------------------------ start

  function start() {
    $("window").addEventListener("change", function () {
      sessionStorage.setItem(WINDOW_KEY, $("window").value);
      if (timers.stream) { clearTimeout(timers.stream); timers.stream = null; }
      poll("stream");
    });
    $("pause").addEventListener("click", function () {
      H.paused = !H.paused;
      $("pause").textContent = H.paused ? "resume" : "pause";
      if (H.paused) { stopPolls(); setStatus("paused", "paused"); } else startPolls();
    });
    $("logout").addEventListener("click", function () {
      sessionStorage.removeItem(TOKEN_KEY);
      token = null;
      showLogin("Token forgotten. Paste a token to open the dashboard again.");
    });
    $("login-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var t = $("login-token").value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      token = t;
      $("login-token").value = "";
      $("login").hidden = true;
      startPolls();
    });
    $("detail-close").addEventListener("click", function () { $("detail").hidden = true; });
    var stream = $("stream");
    stream.addEventListener("mousemove", onStreamMove);
    stream.addEventListener("mouseleave", function () { $("tooltip").hidden = true; });
    stream.addEventListener("click", onStreamClick);
    window.addEventListener("resize", function () {
      if (H.state.stream) drawStream(H.state.stream);
      drawResources();
    });
    window.addEventListener("hashchange", function () { // a token pasted into the address
      var t = readToken();
      if (!t || t === token) return;
      token = t;
      $("login").hidden = true;
      stopPolls();
      startPolls();
    });
    token = readToken();
    $("window").value = sessionStorage.getItem(WINDOW_KEY) || $("window").value;
    drawResources();
    if (!token) { showLogin(); return; }
    startPolls();
  }

  H.openDetail = openDetail;
  // where the stream drew each task: [x0, x1, y0, y1, id] in the canvas's CSS pixels
  H.hitBoxes = function () {
    return hits.map(function (h) { return [h[0], h[1], h[2], h[3], h[4].id]; });
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
