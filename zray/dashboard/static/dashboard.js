// zray dashboard: live updates through Server-Sent Events, charts as inline SVG.
"use strict";
(function () {
  var page = document.body.getAttribute("data-page");
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function svgEl(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function mib(n) { return (n / 1048576).toFixed(1); }
  function colour(name) {
    var h = 0;
    for (var i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) % 360;
    return "hsl(" + h + ",65%,50%)";
  }

  function lineChart(svg, points, max) {
    if (!svg) return;
    clear(svg);
    if (points.length < 2) return;
    var t0 = points[0][0], t1 = points[points.length - 1][0];
    var span = Math.max(t1 - t0, 1), top = Math.max(max, 1e-9);
    var d = points.map(function (p, i) {
      var x = (p[0] - t0) / span * 300, y = 100 - Math.min(p[1] / top, 1) * 95;
      return (i ? "L" : "M") + x.toFixed(1) + "," + y.toFixed(1);
    }).join(" ");
    svg.appendChild(svgEl("path", {d: d, fill: "none", stroke: "#2a7de1", "stroke-width": "2"}));
  }

  function overview(s) {
    var set = function (id, text) { var n = document.getElementById(id); if (n) n.textContent = text; };
    set("node-count", s.nodes_alive);
    var cpu = s.resources_total.CPU || 0, free = s.resources_available.CPU || 0;
    set("cpu-used", (cpu - free) + " / " + cpu);
    set("store-used", mib(s.store_used) + " / " + Math.round(s.store_total / 1048576) + " MiB");
    set("job-count", s.jobs.length);
    var h = s.history;
    lineChart(document.getElementById("chart-cpu"), h.map(function (x) { return [x.t, x.cpu_used]; }),
              Math.max.apply(null, h.map(function (x) { return x.cpu_total; }).concat([1])));
    lineChart(document.getElementById("chart-mem"), h.map(function (x) { return [x.t, x.mem_used]; }),
              Math.max.apply(null, h.map(function (x) { return x.mem_total; }).concat([1])));
    lineChart(document.getElementById("chart-store"), h.map(function (x) { return [x.t, x.store_used]; }),
              Math.max.apply(null, h.map(function (x) { return x.store_total; }).concat([1])));
    var body = document.querySelector("#task-states tbody");
    if (body) {
      clear(body);
      Object.keys(s.tasks_by_state).sort().forEach(function (state) {
        var tr = el("tr");
        tr.appendChild(el("td", {}, state));
        tr.appendChild(el("td", {}, s.tasks_by_state[state]));
        body.appendChild(tr);
      });
    }
  }

  var allTasks = {};
  function tasks(s) {
    s.tasks.forEach(function (t) { allTasks[t.task_id] = t; });
    var now = s.now_ms, from = now - 60000;
    var list = Object.keys(allTasks).map(function (k) { return allTasks[k]; });
    list = list.filter(function (t) { return !t.end_time_ms || t.end_time_ms >= now - 600000; });
    // the stream: a lane per worker, a bar per task
    var svg = document.getElementById("task-stream");
    if (svg) {
      clear(svg);
      var lanes = {}, n = 0, seen = {};
      list.forEach(function (t) {
        if (!t.start_time_ms || (t.end_time_ms && t.end_time_ms < from)) return;
        var w = t.worker_id || "?";
        if (!(w in lanes)) lanes[w] = n++;
      });
      // the window: the last 60 s, narrowed to what ran (at least 10 s)
      var first = now;
      list.forEach(function (t) {
        if (t.start_time_ms && (!t.end_time_ms || t.end_time_ms >= from)) first = Math.min(first, t.start_time_ms);
      });
      from = Math.max(from, Math.min(first - 500, now - 10000));
      var span = now - from;
      var laneH = Math.max(120 / Math.max(n, 1), 4);
      svg.setAttribute("viewBox", "0 0 1000 " + Math.max(120, laneH * n));
      list.forEach(function (t) {
        if (!t.start_time_ms || (t.end_time_ms && t.end_time_ms < from)) return;
        var x0 = Math.max(t.start_time_ms, from), x1 = t.end_time_ms || now;
        var name = t.func_or_class_name || t.name || "task";
        seen[name] = true;
        var r = svgEl("rect", {x: ((x0 - from) / span * 1000).toFixed(1),
          y: (lanes[t.worker_id || "?"] * laneH + 1).toFixed(1),
          width: Math.max((x1 - x0) / span * 1000, 1.5).toFixed(1), height: Math.max(laneH - 2, 2),
          fill: colour(name), stroke: "#fff", "stroke-width": "0.5",
          "class": "task-bar" + (t.end_time_ms ? "" : " running"),
          "data-state": t.state || ""});
        var title = svgEl("title", {});
        title.textContent = name + " (" + t.state + ")";
        r.appendChild(title);
        svg.appendChild(r);
      });
      var legend = document.getElementById("stream-legend");
      clear(legend);
      Object.keys(seen).sort().forEach(function (name) {
        var span = el("span", {}); var i = el("i", {}); i.style.background = colour(name);
        span.appendChild(i); span.appendChild(document.createTextNode(name)); legend.appendChild(span);
      });
    }
    // summary by function and state, filterable
    var filter = (document.getElementById("task-filter") || {}).value || "";
    var counts = {};
    list.forEach(function (t) {
      var key = (t.func_or_class_name || t.name) + "\u0000" + t.state;
      counts[key] = (counts[key] || 0) + 1;
    });
    var body = document.querySelector("#task-summary tbody");
    if (body) {
      clear(body);
      Object.keys(counts).sort().forEach(function (key) {
        if (filter && key.toLowerCase().indexOf(filter.toLowerCase()) < 0) return;
        var parts = key.split("\u0000"), tr = el("tr");
        tr.appendChild(el("td", {}, parts[0])); tr.appendChild(el("td", {}, parts[1]));
        tr.appendChild(el("td", {}, counts[key])); body.appendChild(tr);
      });
    }
    var table = document.querySelector("#task-table tbody");
    if (table) {
      clear(table);
      list.slice(-50).reverse().forEach(function (t) {
        var name = t.func_or_class_name || t.name;
        if (filter && (name + " " + t.state).toLowerCase().indexOf(filter.toLowerCase()) < 0) return;
        var tr = el("tr"), td = el("td"), a = el("a", {href: "/tasks/" + t.task_id}, t.task_id);
        td.appendChild(a); tr.appendChild(td);
        tr.appendChild(el("td", {}, name)); tr.appendChild(el("td", {}, t.state));
        tr.appendChild(el("td", {}, (t.worker_id || "").slice(0, 12)));
        var dur = t.start_time_ms ? (((t.end_time_ms || now) - t.start_time_ms) / 1000).toFixed(2) + " s" : "";
        tr.appendChild(el("td", {}, dur)); tr.appendChild(el("td", {}, t.error_type || ""));
        table.appendChild(tr);
      });
    }
  }

  function jobs(s) {
    var body = document.querySelector("#jobs tbody");
    if (!body) return;
    s.jobs.forEach(function (j) {
      var id = j.submission_id || j.job_id;
      var row = body.querySelector('tr[data-id="' + id + '"]');
      if (!row) {
        row = el("tr", {"data-id": id});
        var td = el("td");
        if (j.submission_id) td.appendChild(el("a", {href: "/jobs/" + j.submission_id}, j.submission_id));
        row.appendChild(td);
        row.appendChild(el("td", {}, j.job_id || ""));
        row.appendChild(el("td", {}, j.type));
        row.appendChild(el("td", {"class": "status"}, j.status));
        row.appendChild(el("td", {}, (j.entrypoint || "").slice(0, 80)));
        row.appendChild(el("td"));
        body.appendChild(row);
      }
      row.querySelector(".status").textContent = j.status;
      row.children[1].textContent = j.job_id || "";
    });
  }

  function live(handler) {
    var source = new EventSource("/api/events");
    source.addEventListener("summary", function (e) { handler(JSON.parse(e.data)); });
  }

  function tail(pre) {
    var offset = 0;
    var open = function () {
      var sep = pre.getAttribute("data-stream").indexOf("?") < 0 ? "?" : "&";
      var source = new EventSource(pre.getAttribute("data-stream") + sep + "offset=" + offset);
      source.addEventListener("log", function (e) {
        var d = JSON.parse(e.data);
        offset = d.offset;
        pre.appendChild(document.createTextNode(d.text));
        pre.scrollTop = pre.scrollHeight;
      });
      source.onerror = function () { source.close(); setTimeout(open, 1000); };
    };
    open();
  }

  if (page === "overview") live(overview);
  if (page === "tasks") {
    live(tasks);
    var f = document.getElementById("task-filter");
    if (f) f.addEventListener("input", function () { tasks({tasks: [], now_ms: Date.now()}); });
  }
  if (page === "jobs") {
    live(jobs);
    document.getElementById("submit-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var body = {entrypoint: document.getElementById("entrypoint").value};
      var wd = document.getElementById("working-dir").value;
      if (wd) body.runtime_env = {working_dir: wd};
      fetch("/api/jobs/", {method: "POST", headers: {"Content-Type": "application/json"},
                           body: JSON.stringify(body), credentials: "same-origin"})
        .then(function (r) { return r.json().then(function (d) { return [r.status, d]; }); })
        .then(function (res) {
          var out = document.getElementById("submit-result");
          out.textContent = res[0] === 200 ? "Submitted " + res[1].submission_id : "Refused: " + res[1].msg;
          out.className = res[0] === 200 ? "" : "error";
        });
    });
  }
  if (page === "job") {
    var stop = document.getElementById("stop-job");
    stop.addEventListener("click", function () {
      fetch("/api/jobs/" + stop.getAttribute("data-id") + "/stop", {method: "POST", credentials: "same-origin"});
    });
    var pre = document.getElementById("log");
    var poll = function () {
      fetch("/api/jobs/" + pre.getAttribute("data-job"), {credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (j) {
          document.getElementById("job-status").textContent = j.status;
          document.getElementById("job-message").textContent = j.message || "";
        });
    };
    live(function () { poll(); });
  }
  var logPre = document.getElementById("log");
  if (logPre && logPre.getAttribute("data-stream")) tail(logPre);
})();
