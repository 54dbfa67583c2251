// skill-fleet dashboard: plain JavaScript, no framework, no build step.
//
// Routes: `#/` (jobs, optionally `#/?status=running`) and `#/jobs/ID` (one job, live).
// The jobs table polls GET /api/v1/jobs with If-None-Match, so an idle server answers 304.
// The job view follows the job's SSE stream, reconnecting with `lastEventId` when it drops.
// A running job shows its lease's owner and how long ago its last heartbeat renewed it;
// `lease_expired` rows of the history (the rescue sweep took the job back) are listed.
// Its artifacts are listed with download links, JSON and images previewed.
// Server data only ever goes in as text (`textContent`, attributes), never as HTML.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'skill-fleet-token';
  const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
  const LIST_MS = 3000;
  const DETAIL_MS = 5000;
  const HIDDEN_MS = 30000;
  const MAX_POINTS = 20000;
  const LOG_LINES = 200;

  let token = localStorage.getItem(TOKEN_KEY) || '';
  let needToken = false;
  let view = null;

  // ---------------------------------------------------------------- formatting

  const pct = (p) => Math.round((p || 0) * 1000) / 10;
  const pctText = (p) => `${Math.round((p || 0) * 100)}%`;
  const money = (v) => (v == null ? '–' : `$${v >= 100 ? v.toFixed(0) : v.toFixed(2)}`);
  const num = (v) => (v == null ? '–' : String(Number(v.toPrecision(4))));
  const pad = (n) => String(n).padStart(2, '0');

  function span(seconds) {
    if (seconds == null || !isFinite(seconds)) return '–';
    let s = Math.max(0, Math.round(seconds));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    s %= 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${pad(m)}m`;
    if (m) return `${m}m ${pad(s)}s`;
    return `${s}s`;
  }

  function when(iso) {
    if (!iso) return '–';
    const t = new Date(iso);
    const today = new Date().toDateString() === t.toDateString();
    return today
      ? t.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
      : t.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  }

  const clock = (ms, seconds) => new Date(ms).toLocaleTimeString([], seconds
    ? { hour: '2-digit', minute: '2-digit', second: '2-digit' }
    : { hour: '2-digit', minute: '2-digit' });
  const tick = (v) => String(Number(v.toPrecision(3)));

  /** Seconds a job has run: until it finished, or until now. */
  function elapsed(job) {
    if (!job.started_at) return null;
    const end = job.completed_at || (TERMINAL.has(job.status) ? job.updated_at : null);
    return ((end ? Date.parse(end) : Date.now()) - Date.parse(job.started_at)) / 1000;
  }

  const eta = (job) => (job.status === 'running' ? span(job.progress.eta_seconds) : '–');

  /** `3s ago`, from a timestamp; a clock a little ahead of ours is `0s ago`. */
  const ago = (iso) => `${span((Date.now() - Date.parse(iso)) / 1000)} ago`;

  /** The lease of a running job, or null: `{owner, renewed_at, expires_at}`. */
  const leaseOf = (job) => (job.status === 'running' && job.lease ? job.lease : null);

  /** Shows a lease's last renewal in `el` (kept ticking by the clock below), or clears it. */
  function setHeartbeat(el, lease, empty) {
    el.dataset.ago = lease ? lease.renewed_at : '';
    setText(el, lease ? ago(lease.renewed_at) : empty);
    el.title = lease ? `renewed ${when(lease.renewed_at)}; the lease expires ${when(lease.expires_at)} unless renewed` : '';
  }

  // ---------------------------------------------------------------- DOM helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else el.setAttribute(k, v);
    }
    el.append(...children);
    return el;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') el.textContent = v;
      else el.setAttribute(k, v);
    }
    return el;
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function setBar(bar, job) {
    const value = pct(job.progress.progress);
    bar.className = `bar ${job.status}`;
    bar.setAttribute('aria-valuenow', String(value));
    bar.setAttribute('aria-valuetext', `${pctText(job.progress.progress)}, ${job.status}`);
    bar.firstChild.style.width = `${value}%`;
  }

  function setBadge(el, status) {
    el.className = `badge ${status}`;
    setText(el, status);
  }

  function notice(message) {
    const el = $('notice');
    el.hidden = !message;
    setText(el, message || '');
  }

  function setConn(ok, text) {
    const el = $('conn');
    el.className = `conn ${ok ? 'ok' : 'bad'}`;
    setText(el, text);
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** One request with the token, if any. Returns the response; throws ApiError when the
   *  server cannot be reached or asks for a token. */
  async function send(path, method, headers) {
    if (token) headers.Authorization = `Bearer ${token}`;
    let res;
    try {
      res = await fetch(path, { method, headers, cache: 'no-store' });
    } catch (err) {
      setConn(false, 'server unreachable, retrying');
      throw new ApiError(0, 'network', 'the server cannot be reached');
    }
    if (res.status === 401) {
      askToken();
      throw new ApiError(401, 'unauthorized', 'this server needs a token');
    }
    return res;
  }

  /** The ApiError of a failed response, from its JSON error body when it has one. */
  function failure(res, data) {
    const e = (data && data.error) || {};
    return new ApiError(res.status, e.code || `http_${res.status}`, e.message || `HTTP ${res.status}`);
  }

  async function jsonOf(res) {
    const text = await res.text();
    try {
      return text ? JSON.parse(text) : null;
    } catch (err) {
      return null;
    }
  }

  /** One API call. Returns `{status, etag, data}`; a 304 has no data. Throws ApiError. */
  async function api(path, { method = 'GET', etag = null } = {}) {
    const headers = { Accept: 'application/json' };
    if (etag) headers['If-None-Match'] = etag;
    const res = await send(path, method, headers);
    if (res.status === 304) return { status: 304, etag };
    const data = await jsonOf(res);
    if (!res.ok) throw failure(res, data);
    return { status: res.status, etag: res.headers.get('ETag'), data };
  }

  function askToken() {
    if (needToken) return;
    needToken = true;
    stopDetail();
    $('token-form').hidden = false;
    $('token-input').value = '';
    $('token-input').focus();
    setConn(false, 'token needed');
  }

  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    token = $('token-input').value.trim();
    if (!token) return;
    localStorage.setItem(TOKEN_KEY, token);
    needToken = false;
    $('token-form').hidden = true;
    $('forget-token').hidden = false;
    onRoute();
  });

  $('forget-token').addEventListener('click', () => {
    localStorage.removeItem(TOKEN_KEY);
    token = '';
    $('forget-token').hidden = true;
    onRoute();
  });

  // ---------------------------------------------------------------- jobs table

  const list = { status: '', limit: 100, url: null, etag: null, data: null, gen: 0, timer: 0, rows: new Map() };
  const LABELS = ['Job', 'Status', 'Type', 'Owner', 'Progress', 'Step', 'Cost', 'Metric', 'ETA', 'Started', 'Duration'];

  function newRow(job) {
    const cells = LABELS.map((label) => h('td', { 'data-label': label }));
    const link = h('a', { class: 'id', href: `#/jobs/${job.id}`, text: job.id });
    cells[0].append(link);
    cells[1].append(h('span', { class: 'badge' }));
    cells[3].append(h('span', { class: 'owner' }), h('span', { class: 'hb' }));
    const bar = h('div', {
      class: 'bar', role: 'progressbar', 'aria-label': `Progress of ${job.id}`,
      'aria-valuemin': '0', 'aria-valuemax': '100',
    }, h('span'));
    cells[4].append(h('div', { class: 'progress' }, bar, h('span', { class: 'pct' })));
    cells[5].className = 'step';
    for (const i of [6, 7, 8, 10]) cells[i].classList.add('num');
    const tr = h('tr', { 'data-job-id': job.id }, ...cells);
    return tr;
  }

  function fillRow(tr, job) {
    const c = tr.cells;
    tr.dataset.status = job.status;
    setBadge(c[1].firstChild, job.status);
    setText(c[2], job.type);
    const lease = leaseOf(job);
    setText(c[3].querySelector('.owner'), lease ? lease.owner : '–');
    setHeartbeat(c[3].querySelector('.hb'), lease, '');
    setBar(c[4].querySelector('.bar'), job);
    setText(c[4].querySelector('.pct'), pctText(job.progress.progress));
    setText(c[5], job.progress.step || '–');
    c[5].title = job.progress.message || '';
    setText(c[6], money(job.progress.cost_usd));
    setText(c[7], num(job.progress.metric));
    setText(c[8], eta(job));
    setText(c[9], when(job.started_at));
    c[9].title = job.started_at || '';
    setText(c[10], span(elapsed(job)));
    c[10].dataset.since = job.status === 'running' && job.started_at ? job.started_at : '';
  }

  function renderList() {
    const body = $('jobs-body');
    const jobs = (list.data && list.data.jobs) || [];
    const seen = new Set();
    jobs.forEach((job, i) => {
      seen.add(job.id);
      let tr = list.rows.get(job.id);
      if (!tr) {
        tr = newRow(job);
        list.rows.set(job.id, tr);
      }
      fillRow(tr, job);
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    });
    for (const [id, tr] of list.rows) {
      if (!seen.has(id)) {
        tr.remove();
        list.rows.delete(id);
      }
    }
    const empty = $('jobs-empty');
    empty.hidden = jobs.length > 0;
    setText(empty, list.status ? `No ${list.status} jobs.` : 'No jobs yet.');
    const more = $('more');
    more.hidden = !(list.data && list.data.next_cursor) || list.limit >= 500;
    const running = jobs.filter((j) => j.status === 'running').length;
    document.title = running ? `(${running} running) skill-fleet` : 'skill-fleet';
  }

  async function loadList() {
    clearTimeout(list.timer);
    const gen = ++list.gen;
    const q = new URLSearchParams({ limit: String(list.limit) });
    if (list.status) q.set('status', list.status);
    const url = `/api/v1/jobs?${q}`;
    try {
      const r = await api(url, { etag: url === list.url ? list.etag : null });
      if (gen !== list.gen) return;
      if (r.status !== 304) {
        list.url = url;
        list.etag = r.etag;
        list.data = r.data;
      }
      renderList();
      setConn(true, `updated ${new Date().toLocaleTimeString()}`);
      notice('');
    } catch (err) {
      if (gen !== list.gen) return;
      if (err.status > 0 && err.status !== 401) notice(err.message);
    }
    if (!needToken && view === 'list' && gen === list.gen) {
      list.timer = setTimeout(loadList, document.hidden ? HIDDEN_MS : LIST_MS);
    }
  }

  $('filters').addEventListener('click', (e) => {
    const button = e.target.closest('button[data-status]');
    if (!button) return;
    const status = button.dataset.status;
    location.hash = status ? `#/?status=${status}` : '#/';
  });

  $('more').addEventListener('click', () => {
    list.limit = Math.min(500, list.limit + 100);
    loadList();
  });

  // ---------------------------------------------------------------- one job

  let detail = null;

  function stopDetail() {
    if (!detail) return;
    if (detail.source) detail.source.close();
    clearTimeout(detail.retryTimer);
    clearTimeout(detail.pollTimer);
    clearTimeout(detail.chartTimer);
    detail.source = null;
    detail.stopped = true;
    dropArtifacts(detail);
  }

  function openDetail(id) {
    stopDetail();
    detail = {
      id, job: null, etag: null, source: null, lastSeq: null, retryMs: 1000, retryTimer: 0,
      pollTimer: 0, chartTimer: 0, points: [], events: [], historyAfter: null, historyRun: null,
      logsEtag: null, dropped: false, stopped: false,
      artifacts: null, artifactsEtag: null, artifactsGen: 0, artifactsKey: null,
      previews: new Map(), downloadUrl: null,
    };
    setText($('job-title'), id);
    setText($('log-out'), '');
    setText($('log-err'), '');
    hideConfirm();
    $('chart').replaceChildren();
    clearArtifacts();
    renderEvents(detail);
    start(detail);
  }

  async function start(d) {
    await loadJob(d);
    if (d.stopped) return;
    if (!d.job) {
      setText($('a-empty'), '–');
      return;
    }
    await refreshHistory(d);
    if (d.stopped) return;
    connectStream(d);
    loadLogs(d);
    loadArtifacts(d);
    schedulePoll(d);
  }

  function schedulePoll(d) {
    clearTimeout(d.pollTimer);
    d.pollTimer = setTimeout(async () => {
      if (d.stopped) return;
      await loadJob(d);
      if (d.job && !TERMINAL.has(d.job.status)) {
        loadLogs(d);
        loadArtifacts(d);
        if (!d.source && !d.retryTimer) connectStream(d);
      }
      schedulePoll(d);
    }, document.hidden ? HIDDEN_MS : DETAIL_MS);
  }

  async function loadJob(d) {
    try {
      const r = await api(`/api/v1/jobs/${encodeURIComponent(d.id)}`, { etag: d.etag });
      if (d.stopped) return;
      if (r.status !== 304) {
        const before = d.job && d.job.status;
        d.etag = r.etag;
        d.job = r.data;
        renderDetail(d);
        if (before && before !== d.job.status) statusChanged(d, before);
      }
      setConn(true, `updated ${new Date().toLocaleTimeString()}`);
      notice('');
    } catch (err) {
      if (d.stopped) return;
      if (err.status === 404) notice(`job ${d.id} not found`);
      else if (err.status > 0 && err.status !== 401) notice(err.message);
    }
  }

  async function loadHistory(d) {
    try {
      for (let page = 0; page < 40; page++) {
        const q = new URLSearchParams({ limit: '5000' });
        if (d.historyAfter != null) q.set('after', String(d.historyAfter));
        const r = await api(`/api/v1/jobs/${encodeURIComponent(d.id)}/progress?${q}`);
        if (d.stopped) return;
        const records = (r.data && r.data.records) || [];
        for (const rec of records) {
          addPoint(d, Date.parse(rec.created_at), rec.metric, rec.cost_usd, true);
          if (rec.event) {
            d.events.push({
              event: rec.event, t: Date.parse(rec.created_at), at: rec.created_at,
              attempt: rec.attempt, message: rec.message,
            });
          }
          d.historyAfter = rec.seq;
        }
        if (!records.length || r.data.next_after == null) break;
      }
    } catch (err) {
      if (err.status > 0 && err.status !== 401) notice(`cannot load the progress history: ${err.message}`);
    }
  }

  /** Reads the history written since the last read (one read at a time), then redraws. */
  function refreshHistory(d) {
    d.historyRun = (d.historyRun || Promise.resolve())
      .then(() => (d.stopped ? null : loadHistory(d)))
      .then(() => {
        if (d.stopped) return;
        renderEvents(d);
        drawChart(d);
      });
    return d.historyRun;
  }

  /** What a change of status seen by the view asks for: a job that stops running may have
   *  been rescued (new history rows); one that starts running has a new lease to show;
   *  one that ended has all its artifacts. */
  function statusChanged(d, before) {
    if (before === 'running') refreshHistory(d);
    // A job's files are all stored before its end is written: one last look.
    if (TERMINAL.has(d.job.status)) loadArtifacts(d);
    if (d.job.status === 'running' && !d.job.lease) {
      d.etag = null;
      loadJob(d);
    }
  }

  /** The history's event rows (`lease_expired`: the worker was lost), newest first. */
  function renderEvents(d) {
    const items = d.events.slice().reverse().map((ev) => h('li', { 'data-event': ev.event },
      h('time', { datetime: ev.at, text: when(ev.at) }),
      h('span', { class: `badge ${ev.event}`, text: ev.event.replace(/_/g, ' ') }),
      h('span', { text: ev.attempt != null ? `attempt ${ev.attempt}` : '' }),
      h('span', { class: 'muted', text: ev.message || '' })));
    $('d-events').replaceChildren(...items);
    $('events-card').hidden = items.length === 0;
  }

  /** Adds a chart point; live points only when something changed or 5 s passed. */
  function addPoint(d, t, metric, cost, history) {
    if (!isFinite(t)) return;
    const last = d.points[d.points.length - 1];
    if (!history && last && last.m === metric && last.c === cost && t - last.t < 5000) return;
    if (last && t < last.t) {
      d.points.push({ t, m: metric, c: cost });
      d.points.sort((a, b) => a.t - b.t);
    } else {
      d.points.push({ t, m: metric, c: cost });
    }
    if (d.points.length > MAX_POINTS) d.points = d.points.filter((_, i) => i % 2 === 0);
  }

  function connectStream(d) {
    if (d.stopped || d.source || (d.job && TERMINAL.has(d.job.status))) {
      if (d.job && TERMINAL.has(d.job.status)) setText($('d-live'), 'finished');
      return;
    }
    d.retryTimer = 0;
    const q = new URLSearchParams();
    if (d.lastSeq != null) q.set('lastEventId', d.lastSeq);
    if (token) q.set('token', token);
    const qs = q.toString();
    const src = new EventSource(`/api/v1/jobs/${encodeURIComponent(d.id)}/stream${qs ? `?${qs}` : ''}`);
    d.source = src;
    setText($('d-live'), 'connecting…');
    src.onopen = () => {
      if (d.stopped) return;
      d.retryMs = 1000;
      setText($('d-live'), 'live');
      if (d.dropped) {
        // Fill the chart with what was written while we were away.
        d.dropped = false;
        refreshHistory(d);
      }
    };
    src.onmessage = (m) => {
      if (d.stopped) return;
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch (err) {
        return;
      }
      if (m.lastEventId) d.lastSeq = m.lastEventId;
      applyEvent(d, ev);
    };
    src.onerror = () => {
      if (d.stopped || d.source !== src) return;
      d.dropped = true;
      setText($('d-live'), 'reconnecting…');
      if (src.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error): retry ourselves, with backoff.
        d.source = null;
        d.retryTimer = setTimeout(async () => {
          await loadJob(d);
          d.retryTimer = 0;
          connectStream(d);
        }, d.retryMs);
        d.retryMs = Math.min(d.retryMs * 2, 30000);
      }
    };
  }

  function applyEvent(d, ev) {
    if (!d.job) return;
    const job = d.job;
    const before = job.status;
    job.status = ev.status;
    if (ev.status !== 'running') job.lease = null;
    job.progress = {
      progress: ev.progress, step: ev.step, message: ev.message,
      cost_usd: ev.cost_usd, metric: ev.metric, eta_seconds: ev.eta_seconds,
    };
    renderDetail(d);
    if (before !== ev.status) statusChanged(d, before);
    addPoint(d, Date.parse(ev.at), ev.metric, ev.cost_usd, false);
    scheduleChart(d);
    if (TERMINAL.has(ev.status)) {
      if (d.source) d.source.close();
      d.source = null;
      setText($('d-live'), 'finished');
      d.etag = null;
      loadJob(d);
      loadLogs(d);
    }
  }

  function renderDetail(d) {
    const job = d.job;
    const p = job.progress;
    setBadge($('d-status'), job.status);
    setBar($('d-bar'), job);
    setText($('d-pct'), pctText(p.progress));
    setText($('d-message'), p.message || '');
    setText($('d-step'), p.step || '–');
    setText($('d-cost'), money(p.cost_usd));
    setText($('d-metric'), num(p.metric));
    setText($('d-eta'), eta(job));
    setText($('d-type'), job.type);
    setText($('d-attempt'), String(job.attempt));
    const lease = leaseOf(job);
    setText($('d-owner'), lease ? lease.owner : '–');
    setHeartbeat($('d-heartbeat'), lease, '–');
    setText($('d-started'), when(job.started_at));
    setText($('d-duration'), span(elapsed(job)));
    $('d-duration').dataset.since = job.status === 'running' && job.started_at ? job.started_at : '';
    const err = $('d-error');
    err.hidden = !job.error;
    setText(err, job.error ? `Error: ${job.error}` : '');
    const extra = { metadata: job.metadata, checkpoint: job.checkpoint, result: job.result, result_path: job.result_path };
    setText($('d-json'), JSON.stringify(extra, null, 2));
    const terminal = TERMINAL.has(job.status);
    $('cancel').disabled = terminal;
    $('resume').disabled = !(job.status === 'failed' || job.status === 'cancelled');
    if (terminal) hideConfirm();
    if (d.artifacts) renderArtifacts(d);
    document.title = `${pctText(p.progress)} ${job.id} (${job.status}) · skill-fleet`;
  }

  async function loadLogs(d) {
    const out = $('log-out');
    const err = $('log-err');
    try {
      const r = await api(`/api/v1/jobs/${encodeURIComponent(d.id)}/logs`, { etag: d.logsEtag });
      if (d.stopped || r.status === 304) return;
      d.logsEtag = r.etag;
      showLog(out, (r.data && r.data.stdout) || []);
      showLog(err, (r.data && r.data.stderr) || []);
    } catch (e) {
      if (d.stopped) return;
      if (e.status === 404) {
        setText(out, 'no logs');
        setText(err, 'no logs');
      }
    }
  }

  function showLog(pre, lines) {
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    setText(pre, lines.length ? lines.slice(-LOG_LINES).join('\n') : 'no output');
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }

  // ---------------------------------------------------------------- artifacts
  //
  // The job's files, listed (with ETag, on the view's own refresh), each a download link.
  // JSON and images are previewed; without a token the links are plain, with one a download
  // goes through fetch (a link cannot send the header) and an object URL. Previews always
  // go through fetch: capped reads, errors shown, and a preview only refetched when the
  // artifact's sha256 changes.

  /** The head of a JSON (or text) artifact that is fetched and shown. */
  const PREVIEW_BYTES = 256 * 1024;
  /** Larger images are not previewed. */
  const PREVIEW_IMAGE_BYTES = 8 * 1024 * 1024;
  /** At most this many previews; the rest are only listed. */
  const MAX_PREVIEWS = 6;

  function bytes(n) {
    if (n == null) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = n;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return i === 0 ? `${v} B` : `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
  }

  const artifactUrl = (d, name) =>
    `/api/v1/jobs/${encodeURIComponent(d.id)}/artifacts/${encodeURIComponent(name)}`;

  /** `json`, `image` or null: how an artifact is previewed. */
  function previewKind(a) {
    const type = (a.content_type || '').split(';')[0].trim().toLowerCase();
    if (type === 'application/json' || type.endsWith('+json') || /\.json$/i.test(a.name)) return 'json';
    if (type.startsWith('image/')) return 'image';
    return null;
  }

  /** The artifact a finished job's `result_path` names (`artifact:NAME`), if any. */
  const resultArtifact = (job) =>
    (job && typeof job.result_path === 'string' && job.result_path.startsWith('artifact:')
      ? job.result_path.slice('artifact:'.length) : null);

  function clearArtifacts() {
    $('a-body').replaceChildren();
    $('a-previews').replaceChildren();
    $('a-wrap').hidden = true;
    $('a-empty').hidden = false;
    setText($('a-empty'), 'Loading…');
    setText($('a-total'), '');
  }

  /** Forgets the view's previews and download, revoking their object URLs. */
  function dropArtifacts(d) {
    for (const p of d.previews.values()) dropPreview(p);
    d.previews.clear();
    if (d.downloadUrl) URL.revokeObjectURL(d.downloadUrl);
    d.downloadUrl = null;
  }

  async function loadArtifacts(d) {
    const gen = ++d.artifactsGen;
    try {
      const r = await api(`/api/v1/jobs/${encodeURIComponent(d.id)}/artifacts`, { etag: d.artifactsEtag });
      if (d.stopped || gen !== d.artifactsGen || r.status === 304) return;
      d.artifactsEtag = r.etag;
      d.artifacts = r.data;
      d.artifactsKey = null;
      renderArtifacts(d);
    } catch (err) {
      if (d.stopped || gen !== d.artifactsGen || err.status === 401 || d.artifacts) return;
      setText($('a-empty'), `Cannot list the artifacts: ${err.message}`);
    }
  }

  /** Draws the list (and the previews) when the list, the job's result or its end changed. */
  function renderArtifacts(d) {
    const list = (d.artifacts && d.artifacts.artifacts) || [];
    const result = resultArtifact(d.job);
    const ended = !!d.job && TERMINAL.has(d.job.status);
    const key = `${result}|${ended}`;
    if (key === d.artifactsKey) return;
    d.artifactsKey = key;
    const rows = list.map((a) => {
      const name = h('span', {},
        h('a', { class: 'id', href: artifactUrl(d, a.name), download: a.name, 'data-artifact': a.name, text: a.name }));
      if (a.name === result) name.append(' ', h('span', { class: 'badge completed', text: 'result' }));
      return h('tr', { 'data-artifact': a.name },
        h('td', { 'data-label': 'Name' }, name),
        h('td', { 'data-label': 'Type', text: a.content_type }),
        h('td', { 'data-label': 'Size', class: 'num', title: `${a.size} bytes`, text: bytes(a.size) }),
        h('td', { 'data-label': 'Created', title: a.created_at, text: when(a.created_at) }),
        h('td', { 'data-label': 'SHA-256', class: 'id', title: a.sha256, text: (a.sha256 || '').slice(0, 12) }));
    });
    $('a-body').replaceChildren(...rows);
    $('a-wrap').hidden = rows.length === 0;
    const empty = $('a-empty');
    empty.hidden = rows.length > 0;
    setText(empty, ended ? 'This job stored no artifacts.' : 'No artifacts yet.');
    const total = rows.length
      ? `${rows.length} ${rows.length === 1 ? 'file' : 'files'}, ${bytes(d.artifacts.total_bytes)}` : '';
    setText($('a-total'), total);
    renderPreviews(d, list, result);
  }

  /** Keeps the preview of each previewable artifact (the same element while its sha256 is
   *  the same and it did not fail), makes the new ones and drops the others. The job's
   *  result comes first. */
  function renderPreviews(d, list, result) {
    const previewable = list.filter((a) => previewKind(a))
      .sort((a, b) => (b.name === result) - (a.name === result));
    const shown = previewable.slice(0, MAX_PREVIEWS);
    const kept = new Map();
    for (const a of shown) {
      let p = d.previews.get(a.name);
      if (!p || p.sha256 !== a.sha256 || p.failed) p = newPreview(d, a);
      kept.set(a.name, p);
    }
    for (const [name, p] of d.previews) {
      if (kept.get(name) !== p) dropPreview(p);
    }
    d.previews = kept;
    const nodes = [...kept.values()].map((p) => p.el);
    const more = previewable.length - shown.length;
    if (more > 0) {
      nodes.push(h('p', {
        class: 'muted',
        text: `${more} more ${more === 1 ? 'artifact' : 'artifacts'} not previewed here: download from the list.`,
      }));
    }
    $('a-previews').replaceChildren(...nodes);
  }

  function newPreview(d, a) {
    const kind = previewKind(a);
    const note = h('span', { class: 'muted note', text: 'loading…' });
    const el = h('figure', { class: `preview ${kind}`, 'data-artifact': a.name },
      h('figcaption', {}, h('span', { class: 'id', text: a.name }), note));
    const p = { name: a.name, sha256: a.sha256, el, note, url: null, dropped: false, failed: false };
    (kind === 'image' ? showImage(d, p, a) : showJson(d, p, a)).catch((err) => {
      if (p.dropped || d.stopped) return;
      p.failed = true; // made again when the list is next drawn
      setText(note, `no preview: ${err.message}`);
    });
    return p;
  }

  function dropPreview(p) {
    p.dropped = true;
    if (p.url) URL.revokeObjectURL(p.url);
    p.url = null;
  }

  /** GET of one artifact (the first `limit` bytes only, if given); throws ApiError. */
  async function fetchArtifact(d, name, limit) {
    const headers = {};
    if (limit) headers.Range = `bytes=0-${limit - 1}`;
    const res = await send(artifactUrl(d, name), 'GET', headers);
    if (!res.ok) throw failure(res, await jsonOf(res));
    return res;
  }

  /** At most `limit` bytes of a response's body (a server that ignores the Range header
   *  sends the whole file: stop reading there). */
  async function readAtMost(res, limit) {
    const out = new Uint8Array(limit);
    let n = 0;
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const take = Math.min(value.length, limit - n);
      out.set(value.subarray(0, take), n);
      n += take;
      if (n >= limit) {
        reader.cancel().catch(() => {});
        break;
      }
    }
    return out.subarray(0, n);
  }

  /** The whole artifact's size from a (partial) response, else what the list said. */
  function sizeOf(res, listed) {
    const range = /\/(\d+)$/.exec(res.headers.get('Content-Range') || '');
    if (range) return Number(range[1]);
    const length = res.headers.get('Content-Length');
    return res.status === 200 && length != null ? Number(length) : listed;
  }

  async function showJson(d, p, a) {
    if (a.size === 0) {
      setText(p.note, 'empty file');
      return;
    }
    const res = await fetchArtifact(d, a.name, PREVIEW_BYTES);
    const head = await readAtMost(res, PREVIEW_BYTES);
    if (p.dropped || d.stopped) return;
    const text = new TextDecoder().decode(head);
    const size = sizeOf(res, a.size);
    let shown = text;
    let note = '';
    if (size > head.length) {
      note = `first ${bytes(head.length)} of ${bytes(size)}, as stored (cut JSON is not reformatted)`;
    } else {
      try {
        shown = JSON.stringify(JSON.parse(text), null, 2);
      } catch (err) {
        note = 'not valid JSON: shown as stored';
      }
    }
    setText(p.note, note);
    p.note.classList.toggle('truncated', size > head.length);
    p.el.append(h('pre', { tabindex: '0', 'aria-label': `${a.name}, preview`, text: shown }));
  }

  async function showImage(d, p, a) {
    if (a.size > PREVIEW_IMAGE_BYTES) {
      setText(p.note, `${bytes(a.size)}: too large to preview, download it`);
      return;
    }
    const res = await fetchArtifact(d, a.name);
    const blob = await res.blob();
    if (p.dropped || d.stopped) return;
    p.url = URL.createObjectURL(blob);
    const img = h('img', { alt: a.name, src: p.url });
    img.addEventListener('load', () => setText(p.note, `${img.naturalWidth}×${img.naturalHeight}`));
    img.addEventListener('error', () => {
      setText(p.note, 'the browser cannot show this image');
      img.remove();
    });
    p.el.append(img);
  }

  // With a token, a plain link would be refused (401): fetch with the header instead, then
  // save the bytes through an object URL (the previous download's is revoked).
  $('a-body').addEventListener('click', async (e) => {
    const link = e.target.closest('a[data-artifact]');
    const d = detail;
    if (!link || !token || !d) return;
    e.preventDefault();
    if (link.getAttribute('aria-busy') === 'true') return;
    const name = link.dataset.artifact;
    link.setAttribute('aria-busy', 'true');
    try {
      const blob = await (await fetchArtifact(d, name)).blob();
      if (d.stopped) return;
      if (d.downloadUrl) URL.revokeObjectURL(d.downloadUrl);
      d.downloadUrl = URL.createObjectURL(blob);
      const save = h('a', { href: d.downloadUrl, download: name, hidden: '' });
      document.body.append(save);
      save.click();
      save.remove();
    } catch (err) {
      if (err.status !== 401 && !d.stopped) notice(`cannot download ${name}: ${err.message}`);
    } finally {
      link.removeAttribute('aria-busy');
    }
  });

  // ---------------------------------------------------------------- cancel / resume

  function hideConfirm() {
    $('confirm-cancel').hidden = true;
    $('cancel').hidden = false;
  }

  $('cancel').addEventListener('click', () => {
    $('cancel').hidden = true;
    $('confirm-cancel').hidden = false;
    $('cancel-yes').focus();
  });

  $('cancel-no').addEventListener('click', () => {
    hideConfirm();
    $('cancel').focus();
  });

  async function lifecycle(action) {
    const d = detail;
    if (!d) return;
    const buttons = [$('cancel-yes'), $('resume')];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const r = await api(`/api/v1/jobs/${encodeURIComponent(d.id)}/${action}`, { method: 'POST' });
      if (d.stopped) return;
      d.job = r.data;
      d.etag = null;
      renderDetail(d);
      notice('');
      if (action === 'resume') connectStream(d);
    } catch (err) {
      if (err.status !== 401) notice(`cannot ${action} ${d.id}: ${err.message}`);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
      if (d.job) renderDetail(d);
      hideConfirm();
    }
  }

  $('cancel-yes').addEventListener('click', () => lifecycle('cancel'));
  $('resume').addEventListener('click', () => lifecycle('resume'));

  // ---------------------------------------------------------------- chart

  function scheduleChart(d) {
    if (d.chartTimer) return;
    d.chartTimer = setTimeout(() => {
      d.chartTimer = 0;
      if (!d.stopped) drawChart(d);
    }, 1000);
  }

  function drawChart(d) {
    const el = $('chart');
    let pts = d.points;
    if (pts.length < 2) {
      el.replaceChildren(h('p', { class: 'muted', text: 'No progress history yet.' }));
      return;
    }
    if (pts.length > 600) {
      const step = Math.ceil(pts.length / 600);
      pts = pts.filter((_, i) => i % step === 0 || i === d.points.length - 1);
    }
    const W = Math.max(280, el.clientWidth || 720);
    const H = 240, L = 52, R = 58, T = 30, B = 26;
    const t0 = pts[0].t;
    const t1 = Math.max(pts[pts.length - 1].t, t0 + 1000);
    const ms = pts.filter((p) => p.m != null).map((p) => p.m);
    let mLo = ms.length ? Math.min(...ms) : 0;
    let mHi = ms.length ? Math.max(...ms) : 1;
    if (mHi - mLo < 1e-9) { mLo -= 0.5; mHi += 0.5; }
    const cHi = Math.max(...pts.map((p) => p.c || 0)) || 1;
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (f) => T + (1 - f) * (H - T - B);
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img' });
    const last = pts[pts.length - 1];
    root.setAttribute('aria-label',
      `Metric (left axis) and cost (right axis) over ${span((t1 - t0) / 1000)}; latest metric ${num(last.m)}, cost ${money(last.c)}`);
    for (let i = 0; i <= 3; i++) {
      const f = i / 3;
      root.append(svg('line', { class: 'grid', x1: L, x2: W - R, y1: y(f), y2: y(f) }));
      root.append(svg('text', { x: L - 6, y: y(f) + 4, 'text-anchor': 'end', text: tick(mLo + f * (mHi - mLo)) }));
      root.append(svg('text', { x: W - R + 6, y: y(f) + 4, text: money(f * cHi) }));
    }
    for (const f of [0, 0.5, 1]) {
      const t = t0 + f * (t1 - t0);
      const anchor = f === 0 ? 'start' : f === 1 ? 'end' : 'middle';
      root.append(svg('text', { x: x(t), y: H - 8, 'text-anchor': anchor, text: clock(t, t1 - t0 < 600000) }));
    }
    const line = (pick, cls) => {
      let path = '';
      let pen = 'M';
      for (const p of pts) {
        const v = pick(p);
        if (v == null) { pen = 'M'; continue; }
        path += `${pen}${x(p.t).toFixed(1)} ${y(v).toFixed(1)} `;
        pen = 'L';
      }
      if (path) root.append(svg('path', { class: cls, d: path.trim() }));
    };
    line((p) => (p.m == null ? null : (p.m - mLo) / (mHi - mLo)), 'metric');
    line((p) => (p.c == null ? null : p.c / cHi), 'cost');
    for (const ev of d.events) {
      if (ev.t < t0 || ev.t > t1) continue;
      const mark = svg('line', { class: 'event', x1: x(ev.t), x2: x(ev.t), y1: T, y2: H - B });
      mark.append(svg('title', { text: `${ev.event.replace(/_/g, ' ')} ${when(ev.at)}` }));
      root.append(mark);
    }
    root.append(svg('rect', { class: 'key-metric', x: L, y: 8, width: 14, height: 4 }));
    root.append(svg('text', { x: L + 20, y: 14, text: 'metric' }));
    root.append(svg('rect', { class: 'key-cost', x: L + 80, y: 8, width: 14, height: 4 }));
    root.append(svg('text', { x: L + 100, y: 14, text: 'cost (USD)' }));
    el.replaceChildren(root);
  }

  // ---------------------------------------------------------------- routing

  function onRoute() {
    const hash = location.hash.replace(/^#/, '') || '/';
    const m = hash.match(/^\/jobs\/([A-Za-z0-9_-]{1,64})$/);
    notice('');
    if (m) {
      view = 'detail';
      clearTimeout(list.timer);
      list.gen++;
      $('list-view').hidden = true;
      $('detail-view').hidden = false;
      openDetail(m[1]);
      return;
    }
    view = 'list';
    stopDetail();
    detail = null;
    const status = new URLSearchParams(hash.split('?')[1] || '').get('status') || '';
    if (status !== list.status) {
      list.status = status;
      list.limit = 100;
    }
    for (const b of $('filters').querySelectorAll('button')) {
      b.setAttribute('aria-pressed', String(b.dataset.status === status));
    }
    $('detail-view').hidden = true;
    $('list-view').hidden = false;
    document.title = 'skill-fleet';
    loadList();
  }

  // Durations of running jobs and the age of their last heartbeat tick every second without
  // asking the server.
  setInterval(() => {
    for (const el of document.querySelectorAll('[data-since]:not([data-since=""])')) {
      setText(el, span((Date.now() - Date.parse(el.dataset.since)) / 1000));
    }
    for (const el of document.querySelectorAll('[data-ago]:not([data-ago=""])')) {
      setText(el, ago(el.dataset.ago));
    }
  }, 1000);

  document.addEventListener('visibilitychange', () => {
    if (document.hidden || needToken) return;
    if (view === 'list') loadList();
    else if (detail) schedulePoll(detail);
  });

  let resizeTimer = 0;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (detail && !detail.stopped) drawChart(detail); }, 150);
  });

  window.addEventListener('hashchange', onRoute);
  $('forget-token').hidden = !token;
  onRoute();
})();
