// thermoml dashboard: the job list refreshes from the API, the workers' section from /workers;
// a job page follows its event stream.
"use strict";
const thermoml = (() => {
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const PLOT_EVERY_MS = 2000;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
  }

  function progressText(p) {
    p = p || {};
    const parts = [`${Math.round(100 * (p.fraction || 0))}%`];
    if (p.epoch != null) parts.push(`epoch ${p.epoch}${p.epochs ? "/" + p.epochs : ""}`);
    if (p.step != null) parts.push(`step ${p.step}${p.total_steps ? "/" + p.total_steps : ""}`);
    return parts.join(" · ");
  }

  function badge(status) { return el("span", { class: `badge status-${status}` }, status); }

  function progressBar(progress, status) {
    const pct = Math.max(0, Math.min(100, 100 * ((progress || {}).fraction || 0)));
    return el("div", { class: "progress" },
      el("div", { class: "bar" }, el("div", { class: `fill status-${status}`, style: `width: ${pct.toFixed(0)}%` })),
      el("span", { class: "progress-text" }, progressText(progress)));
  }

  function number(v) {
    if (v === null || v === undefined) return "null";
    return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(6).replace(/\.?0+($|e)/, "$1")) : String(v);
  }

  // --- the job list -----------------------------------------------------------------------
  function jobList() {
    const table = document.getElementById("jobs-table");
    const body = document.getElementById("jobs");
    const query = new URLSearchParams(JSON.parse(table.dataset.query || "{}"));
    async function refresh() {
      if (document.hidden) return;
      try {
        const answer = await fetch(`/v1/jobs?${query}`, { headers: { Accept: "application/json" } });
        if (!answer.ok) return;
        const page = await answer.json();
        if (!page.items.length) return;
        body.replaceChildren(...page.items.map((job) => el("tr", { "data-id": job.id },
          el("td", {}, el("a", { href: `/jobs/${job.id}` }, job.name)),
          el("td", {}, job.kind),
          el("td", {}, badge(job.status)),
          el("td", {}, progressBar(job.progress, job.status)),
          el("td", { class: "muted" }, when(job.created_at)),
          el("td", {}, job.model_id ? el("a", { href: `/models/${job.model_id}` }, "model") : ""))));
      } catch (err) { /* the server may be restarting: try again at the next tick */ }
    }
    setInterval(refresh, 3000);
    workerList();
  }

  // --- the workers' section: the server renders it (scoped to the caller's tenant) ------------
  function workerList() {
    async function refresh() {
      const section = document.getElementById("workers");
      if (!section || document.hidden) return;
      try {
        const answer = await fetch("/workers", { headers: { Accept: "text/html" } });
        if (!answer.ok) return;
        const page = new DOMParser().parseFromString(await answer.text(), "text/html");
        const fresh = page.getElementById("workers");
        if (fresh) section.replaceWith(document.importNode(fresh, true));
      } catch (err) { /* try again at the next tick */ }
    }
    setInterval(refresh, 3000);
  }

  // --- one job -----------------------------------------------------------------------------
  function jobPage() {
    const data = JSON.parse(document.getElementById("page-data").textContent);
    const plot = document.getElementById("plot");
    const live = document.getElementById("live");
    let status = data.status, lastPlot = Date.now(), pending = null, version = 0;

    // At most one new picture every PLOT_EVERY_MS; it shows the newest points when it loads.
    function reloadPlot(force) {
      version += 1;
      if (pending) {
        if (!force) return;
        clearTimeout(pending);
      }
      const wait = force ? 0 : Math.max(0, lastPlot + PLOT_EVERY_MS - Date.now());
      pending = setTimeout(() => {
        pending = null;
        lastPlot = Date.now();
        const next = new Image();
        const final = status !== null && TERMINAL.has(status);
        next.onload = () => {
          plot.src = next.src;
          if (final) plot.dataset.final = "true";  // the picture of the ended job
        };
        next.src = `${data.plot}?v=${version}`;
      }, wait);
    }

    function setStatus(s) {
      status = s.status;
      document.getElementById("status").replaceChildren(badge(s.status));
      for (const key of ["attempts", "worker", "device"]) {
        document.getElementById(key).textContent = s[key] == null ? "—" : s[key];
      }
      document.getElementById("started").textContent = when(s.started_at);
      document.getElementById("finished").textContent = when(s.finished_at);
      if (s.model_id) {
        document.getElementById("model").replaceChildren(el("a", { href: `/models/${s.model_id}` }, s.model_id));
      }
      const error = document.getElementById("error");
      if (s.error) { error.hidden = false; error.replaceChildren(el("strong", {}, s.error.code), `: ${s.error.message}`); }
      const fill = document.querySelector("#progress .fill");
      if (fill) fill.className = `fill status-${s.status}`;
    }

    function setProgress(p) {
      document.getElementById("progress").replaceChildren(progressBar(p, status));
    }

    // The latest values, as the server's service/telemetry_notes.py shows them: a metric with no
    // finite point is listed apart with its reason, `equilibrium` is a badge with its statistic
    // in the tooltip, and `grad_noise_scale` reads "≥ value" when it is a lower bound.
    const notes = data.notes;
    const latest = new Map(Object.entries(data.latest));  // name -> [step, value]
    const defined = new Set(data.defined);  // names with at least one finite point

    function baseName(name) {
      for (const prefix of notes.prefixes) if (name.startsWith(prefix)) return name.slice(prefix.length);
      return name;
    }

    function prefixOf(name) { return name.slice(0, name.length - baseName(name).length); }

    function sortedInsert(parent, node, name) {
      const after = [...parent.children].find((r) => r.dataset.name > name);
      parent.insertBefore(node, after || null);
    }

    function showRow(name) {
      const body = document.querySelector("#latest tbody");
      let row = body.querySelector(`tr[data-name="${CSS.escape(name)}"]`);
      if (!row) {
        row = el("tr", { "data-name": name }, el("td", {}, name), el("td", {}), el("td", {}));
        sortedInsert(body, row, name);
      }
      const gone = document.querySelector(`#hidden-metrics li[data-name="${CSS.escape(name)}"]`);
      if (gone) gone.remove();
      document.getElementById("undefined").hidden = !document.querySelector("#hidden-metrics li");
      const [step, value] = latest.get(name);
      const text = number(value);
      let bound = false;
      if (baseName(name) === "grad_noise_scale" && value !== null) {
        const flag = latest.get(`${prefixOf(name)}grad_noise_scale_lower_bound`);
        bound = Boolean(flag && flag[0] === step && flag[1] === 1);
      }
      const cell = row.children[2];
      row.children[1].textContent = step;
      cell.textContent = bound ? `≥ ${text}` : text;
      cell.className = bound ? "bound" : "";
      if (bound) cell.title = notes.bound_title; else cell.removeAttribute("title");
    }

    function hideRow(name) {
      const list = document.getElementById("hidden-metrics");
      if (list.querySelector(`li[data-name="${CSS.escape(name)}"]`)) return;
      const reason = notes.reasons[baseName(name)] || notes.other;
      sortedInsert(list, el("li", { "data-name": name, title: `${notes.intro} ${reason}` }, name), name);
      document.getElementById("undefined").hidden = false;
    }

    function setBadge(name) {
      const prefix = prefixOf(name);
      const [step, value] = latest.get(name);
      const state = value === null ? "unknown" : value === 1 ? "in" : "out";
      const label = { in: "in equilibrium", out: "not in equilibrium", unknown: "equilibrium untested" }[state];
      const stat = latest.get(`${prefix}equilibrium_statistic`);
      const t = stat && stat[0] === step ? number(stat[1]) : "null";
      const title = state === "unknown"
        ? `At step ${step}: ${notes.reasons.equilibrium} ${notes.equilibrium_rule}`
        : `${prefix}equilibrium_statistic t = ${t} at step ${step}. ${notes.equilibrium_rule}`;
      const who = prefix ? `${prefix.replace(/_$/, "")}: ` : "";
      const badgeNode = el("span", { class: `badge equilibrium equilibrium-${state}`, "data-name": name, title }, who + label);
      const box = document.getElementById("equilibria");
      const old = box.querySelector(`[data-name="${CSS.escape(name)}"]`);
      if (old) old.replaceWith(badgeNode); else sortedInsert(box, badgeNode, name);
    }

    function setLatest(series) {
      const touched = new Set();
      for (const [name, s] of Object.entries(series)) {
        const i = s.steps.length - 1;
        if (i < 0) continue;
        latest.set(name, [s.steps[i], s.values[i]]);
        if (s.values.some((v) => v !== null)) defined.add(name);
        touched.add(name);
      }
      for (const name of [...touched]) {  // a flag or a statistic changes how its metric reads
        const base = baseName(name);
        if (base === "grad_noise_scale_lower_bound") touched.add(`${prefixOf(name)}grad_noise_scale`);
        if (base === "equilibrium_statistic") touched.add(`${prefixOf(name)}equilibrium`);
      }
      for (const name of touched) {
        if (!latest.has(name)) continue;
        if (defined.has(name)) showRow(name); else hideRow(name);
        if (notes.trained && baseName(name) === "equilibrium") setBadge(name);
      }
    }

    if (data.ended) { live.textContent = "ended"; return; }
    const url = new URL(data.events, location.href);
    url.searchParams.set("last_event_id", data.last_event_id);
    const source = new EventSource(url);
    source.onopen = () => { live.textContent = "live: following the job's events"; live.classList.add("on"); };
    source.onerror = () => { live.textContent = "reconnecting…"; live.classList.remove("on"); };
    source.addEventListener("status", (e) => setStatus(JSON.parse(e.data)));
    source.addEventListener("progress", (e) => setProgress(JSON.parse(e.data)));
    source.addEventListener("metrics", (e) => { setLatest(JSON.parse(e.data).series); reloadPlot(false); });
    source.addEventListener("end", (e) => {
      const end = JSON.parse(e.data);
      source.close();
      status = end.status;
      live.textContent = `ended: ${end.status}`; live.classList.remove("on");
      if (end.result) document.getElementById("result").textContent = JSON.stringify(end.result, null, 2);
      reloadPlot(true);
    });
  }

  return { jobList, jobPage, workerList };
})();
