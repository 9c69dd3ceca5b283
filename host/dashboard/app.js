// Sluice dashboard: one page over the documented HTTP API.
//
// The token lives in sessionStorage (this tab only) and goes out as a
// bearer header; any 401 signs the page out. Views are hash routes, so
// every view, rule, fire and filtered timeline has a link of its own. All
// text from the server is set as text, never parsed as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'sluice.token';
  const TIMELINE_CAP = 5000;
  const ROW_H = 30;
  const main = document.getElementById('view');
  const notice = document.getElementById('notice');

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    who: null,
    cleanups: [],
    ping: null,
  };

  class SignedOut extends Error {}

  // --- small helpers ---------------------------------------------------

  /** An element with attributes (on* are listeners) and children. */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      // Through the CSSOM: the content policy refuses style attributes.
      else if (k === 'style') Object.assign(el.style, v);
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === undefined || kid === null || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  const fmtInt = (n) => (n ?? 0).toLocaleString('en-US');

  function fmtTime(ms) {
    if (ms === null || ms === undefined) return '—';
    const d = new Date(ms);
    return isNaN(d) ? String(ms) : d.toLocaleString();
  }

  function clockTime(ms) {
    const d = new Date(ms);
    const p = (n, w = 2) => String(n).padStart(w, '0');
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }

  function ago(ms, now = Date.now()) {
    if (ms === null || ms === undefined) return '';
    const s = Math.round((ms - now) / 1000);
    const a = Math.abs(s);
    if (a < 2) return 'just now';
    const text = a < 60 ? `${a}s` : a < 3600 ? `${Math.round(a / 60)}m` : a < 86400
      ? `${Math.round(a / 3600)}h` : `${Math.round(a / 86400)}d`;
    return s >= 0 ? `in ${text}` : `${text} ago`;
  }

  function timeCell(ms) {
    if (ms === null || ms === undefined) return h('span', { class: 'empty' }, 'none');
    return h('time', { datetime: new Date(ms).toISOString(), title: new Date(ms).toISOString() },
      `${fmtTime(ms)} (${ago(ms)})`);
  }

  function statusBadge(status, extra) {
    return h('span', { class: `status ${status}` }, status, extra ? `: ${extra}` : '');
  }

  function reasonText(r) {
    if (!r) return '—';
    if (typeof r === 'string') return r;
    if (r.dwell) return `dwell: ${r.dwell.label} (epoch ${r.dwell.epoch}, #${r.dwell.ordinal})`;
    if (r.schedule) return `schedule tick ${fmtTime(r.schedule.tick)}${r.schedule.catch_up ? ' (catch-up)' : ''}`;
    return JSON.stringify(r);
  }

  function json(v) {
    return h('pre', {}, typeof v === 'string' ? v : JSON.stringify(v, null, 2));
  }

  function short(v, n = 120) {
    const s = typeof v === 'string' ? v : JSON.stringify(v);
    return s && s.length > n ? `${s.slice(0, n)}…` : s;
  }

  function say(text, error = false) {
    notice.textContent = text;
    notice.classList.toggle('error', error);
  }

  function params() {
    const q = location.hash.split('?')[1] || '';
    return new URLSearchParams(q);
  }

  function hashWith(path, values) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(values)) if (v !== '' && v !== null && v !== undefined) q.set(k, v);
    const s = q.toString();
    return s ? `${path}?${s}` : path;
  }

  /** Run `fn` now and every `ms` while the view stays. */
  function every(ms, fn) {
    const id = setInterval(() => fn().catch(failed), ms);
    state.cleanups.push(() => clearInterval(id));
  }

  /** Replace `box`'s content, keeping focus on the element with the same
   * data-key (a refresh must not throw a keyboard user back to the top). */
  function refill(box, ...nodes) {
    const key = document.activeElement?.dataset?.key;
    box.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
    if (key) box.querySelector(`[data-key="${CSS.escape(key)}"]`)?.focus();
  }

  function failed(e) {
    if (e instanceof SignedOut) return;
    say(e.message || String(e), true);
  }

  // --- the API ---------------------------------------------------------

  async function api(path, opts = {}) {
    const headers = { ...(opts.headers || {}), Authorization: `Bearer ${state.token}` };
    const r = await fetch(path, { ...opts, headers });
    if (r.status === 401) {
      signOut('The token is unknown or was revoked: sign in again.');
      throw new SignedOut();
    }
    const text = await r.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = text; }
    if (!r.ok) {
      const e = new Error(body?.error?.message || `${r.status} ${r.statusText}`);
      e.status = r.status;
      throw e;
    }
    return body;
  }

  /** Follow the SSE feed with the bearer header (EventSource cannot send
   * one): `onItem(type, seq, data)`; reconnects with Last-Event-ID. */
  function follow(query, onItem, onState) {
    const ctl = new AbortController();
    let last = null;
    let stopped = false;
    (async () => {
      while (!stopped) {
        try {
          const headers = { Authorization: `Bearer ${state.token}` };
          if (last !== null) headers['Last-Event-ID'] = String(last);
          const r = await fetch(`/v1/feed?${query}`, { headers, signal: ctl.signal });
          if (r.status === 401) {
            signOut('The token is unknown or was revoked: sign in again.');
            return;
          }
          if (!r.ok) throw new Error(`feed: ${r.status}`);
          onState('live');
          const reader = r.body.getReader();
          const dec = new TextDecoder();
          let buf = '';
          let ev = { type: 'message', id: null, data: [] };
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += dec.decode(value, { stream: true });
            let nl;
            while ((nl = buf.indexOf('\n')) >= 0) {
              const line = buf.slice(0, nl).replace(/\r$/, '');
              buf = buf.slice(nl + 1);
              if (line === '') {
                if (ev.data.length) {
                  if (ev.id !== null) last = ev.id;
                  onItem(ev.type, ev.id, ev.data.join('\n'));
                }
                ev = { type: 'message', id: null, data: [] };
              } else if (line.startsWith(':')) {
                // a heartbeat
              } else {
                const i = line.indexOf(':');
                const field = i < 0 ? line : line.slice(0, i);
                const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
                if (field === 'event') ev.type = val;
                else if (field === 'id') ev.id = val;
                else if (field === 'data') ev.data.push(val);
              }
            }
          }
          onState('reconnecting');
        } catch (e) {
          if (stopped) return;
          onState('reconnecting');
        }
        await new Promise((res) => setTimeout(res, 1000));
        // The token may have been revoked meanwhile.
        if (!stopped) await api('/v1/whoami').catch(() => {});
      }
    })();
    const stop = () => { stopped = true; ctl.abort(); };
    state.cleanups.push(stop);
    return stop;
  }

  // --- signing in and out ----------------------------------------------

  function signOut(why) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.who = null;
    clearInterval(state.ping);
    for (const el of ['nav', 'admin-nav', 'who']) document.getElementById(el).hidden = true;
    stopView();
    signInView(why);
  }

  function signedIn(who) {
    state.who = who;
    document.getElementById('who').hidden = false;
    document.getElementById('who-name').textContent =
      who.role === 'admin' ? 'Signed in as the admin' : `Tenant ${who.tenant}`;
    document.getElementById('nav').hidden = who.role !== 'tenant';
    document.getElementById('admin-nav').hidden = who.role !== 'admin';
    clearInterval(state.ping);
    // A revoked token signs the page out within seconds, whatever it shows.
    state.ping = setInterval(() => api('/v1/whoami').catch(() => {}), 5000);
  }

  function signInView(why) {
    stopView();
    document.title = 'Sign in · Sluice';
    const input = h('input', {
      id: 'token', type: 'password', name: 'token', autocomplete: 'off', required: true,
      'aria-describedby': 'token-help',
    });
    const error = h('p', { class: 'notice error', role: 'alert', id: 'signin-error' });
    const form = h('form', {
      onsubmit: async (ev) => {
        ev.preventDefault();
        error.textContent = '';
        state.token = input.value.trim();
        try {
          const r = await fetch('/v1/whoami', { headers: { Authorization: `Bearer ${state.token}` } });
          const body = await r.json().catch(() => ({}));
          if (!r.ok) throw new Error(body?.error?.message || `${r.status}`);
          sessionStorage.setItem(TOKEN_KEY, state.token);
          signedIn(body);
          say('');
          const home = body.role === 'admin' ? '#/admin' : '#/rules';
          const wanted = location.hash && !location.hash.startsWith('#/signin') ? location.hash : home;
          if ((body.role === 'admin') !== wanted.startsWith('#/admin')) location.hash = home;
          else if (location.hash === wanted) route();
          else location.hash = wanted;
        } catch (e) {
          state.token = null;
          error.textContent = `Sign-in refused: ${e.message}`;
          input.focus();
        }
      },
    },
    h('label', { for: 'token' }, 'Token'),
    input,
    h('p', { id: 'token-help', class: 'empty' },
      "A tenant's token (sluice_…) shows its rules, fires and feed; the admin token shows tenants and nodes. It is kept for this tab only."),
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
    error);
    main.replaceChildren(h('section', { class: 'signin', 'aria-labelledby': 'signin-title' },
      h('h1', { id: 'signin-title' }, 'Sign in to Sluice'),
      why ? h('p', { class: 'notice error', role: 'alert' }, why) : null,
      form));
    input.focus();
  }

  // --- routing -----------------------------------------------------------

  function stopView() {
    for (const c of state.cleanups.splice(0)) c();
  }

  const routes = [
    [/^#\/rules\/([^/?]+)/, ruleView, 'rules'],
    [/^#\/rules/, rulesView, 'rules'],
    [/^#\/fires\/([^/?]+)/, fireView, 'timeline'],
    [/^#\/timeline/, timelineView, 'timeline'],
    [/^#\/dead/, deadView, 'dead'],
    [/^#\/events/, eventsView, 'events'],
    [/^#\/charts/, chartsView, 'charts'],
    [/^#\/admin/, adminView, 'admin'],
  ];

  async function route() {
    if (!state.token) return signInView();
    if (!state.who) {
      try {
        signedIn(await api('/v1/whoami'));
      } catch (e) {
        if (!(e instanceof SignedOut)) signInView(e.message);
        return;
      }
    }
    stopView();
    const hash = location.hash || (state.who.role === 'admin' ? '#/admin' : '#/rules');
    let found = routes.find(([re]) => re.test(hash)) || routes[1];
    if (state.who.role === 'admin') found = routes[routes.length - 1];
    else if (found[2] === 'admin') found = routes[1];
    const [re, view, nav] = found;
    const m = hash.match(re) || [];
    for (const a of document.querySelectorAll('nav a[data-view]')) {
      if (a.dataset.view === nav) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    main.replaceChildren();
    say('');
    try {
      await view(main, ...m.slice(1).map(decodeURIComponent));
    } catch (e) {
      failed(e);
    }
    main.focus({ preventScroll: true });
  }

  window.addEventListener('hashchange', route);
  document.getElementById('sign-out').addEventListener('click', () => {
    signOut();
    history.replaceState(null, '', '#/signin');
  });

  // Keys: views, the first filter, next / previous row.
  document.addEventListener('keydown', (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !state.who) return;
    const tag = ev.target.tagName;
    if (tag === 'INPUT' || tag === 'SELECT' || tag === 'TEXTAREA') return;
    const views = { r: '#/rules', t: '#/timeline', d: '#/dead', e: '#/events', c: '#/charts' };
    if (views[ev.key] && state.who.role === 'tenant') {
      location.hash = views[ev.key];
      ev.preventDefault();
    } else if (ev.key === '/') {
      const first = main.querySelector('input, select');
      if (first) { first.focus(); ev.preventDefault(); }
    } else if (ev.key === 'j' || ev.key === 'k') {
      const rows = [...main.querySelectorAll('[data-row]')];
      if (!rows.length) return;
      const at = rows.indexOf(document.activeElement);
      const next = ev.key === 'j' ? Math.min(at + 1, rows.length - 1) : Math.max(at - 1, 0);
      if (main.dataset.virtual && at >= 0 && next === at) {
        main.dispatchEvent(new CustomEvent('rowkey', { detail: ev.key }));
      } else {
        rows[at < 0 ? 0 : next].focus();
      }
      ev.preventDefault();
    }
  });

  // --- rules ---------------------------------------------------------------

  async function control(name, action) {
    await api(`/v1/rules/${encodeURIComponent(name)}/${action}`, { method: 'POST' });
    say(`Rule ${name} ${action === 'pause' ? 'paused' : 'resumed'}.`);
  }

  function controlButton(rule, redraw) {
    const paused = rule.status === 'paused' || rule.status === 'suspended' || rule.status === 'failed';
    const action = paused ? 'resume' : 'pause';
    return h('button', {
      type: 'button', 'data-key': `${action}-${rule.name}`,
      'aria-label': `${paused ? 'Resume' : 'Pause'} ${rule.name}`,
      onclick: async (ev) => {
        ev.target.disabled = true;
        try { await control(rule.name, action); await redraw(); } catch (e) { failed(e); }
      },
    }, paused ? 'Resume' : 'Pause');
  }

  async function rulesView(root) {
    document.title = 'Rules · Sluice';
    const box = h('div', { class: 'scroll' });
    root.append(h('h1', {}, 'Rules'), box);
    const draw = async () => {
      const rules = await api('/v1/rules');
      if (!rules.length) {
        refill(box, h('p', { class: 'empty' },
          'No rules yet. Deploy one with: sluice deploy path/to/rule --url … --token …'));
        return;
      }
      const c = (r, k) => fmtInt(r.counters?.[k]);
      refill(box, h('table', {},
        h('caption', { class: 'empty' }, `${rules.length} rule${rules.length === 1 ? '' : 's'}; refreshed every 5 s`),
        h('thead', {}, h('tr', {},
          ['Rule', 'Kind', 'Version', 'Status', 'Matched', 'Fires', 'Failed', 'Dead letters', 'Pending',
            'Partitions', 'Last error', 'Actions'].map((t, i) =>
            h('th', { scope: 'col', class: i >= 4 && i <= 9 ? 'num' : null }, t)))),
        h('tbody', {}, rules.map((r) => h('tr', {},
          h('th', { scope: 'row' }, h('a', { href: `#/rules/${encodeURIComponent(r.name)}`, 'data-row': true, 'data-key': `rule-${r.name}` }, r.name)),
          h('td', {}, r.kind),
          h('td', { class: 'num' }, r.version),
          h('td', {}, statusBadge(r.status, r.suspended_reason)),
          h('td', { class: 'num' }, c(r, 'matched')),
          h('td', { class: 'num' }, c(r, 'fires_ok')),
          h('td', { class: 'num' }, c(r, 'fires_failed')),
          h('td', { class: 'num' }, r.dead_letters ? h('a', { href: `#/dead?rule=${encodeURIComponent(r.name)}` }, fmtInt(r.dead_letters)) : '0'),
          h('td', { class: 'num' }, fmtInt(r.pending_fires)),
          h('td', { class: 'num' }, fmtInt(r.partitions)),
          h('td', {}, r.last_error ? short(r.last_error, 90) : h('span', { class: 'empty' }, 'none')),
          h('td', {}, controlButton(r, draw)))))));
    };
    await draw();
    every(5000, draw);
  }

  function partitionState(kind, p) {
    const s = p.state || {};
    if (kind === 'batch') return `${fmtInt(s.events)} event${s.events === 1 ? '' : 's'} since ${fmtTime(s.opened_at)} (seq ${s.first_seq}–${s.last_seq})`;
    if (kind === 'dwell') return s.member ? `member since ${fmtTime(s.since)} (epoch ${s.epoch})` : `not a member (last epoch ${s.epoch})`;
    if (kind === 'schedule') return `${fmtInt(s.events)} event${s.events === 1 ? '' : 's'} since the last tick`;
    return JSON.stringify(s);
  }

  async function ruleView(root, name) {
    document.title = `${name} · Sluice`;
    const q = params();
    const after = q.get('after');
    const enc = encodeURIComponent(name);
    const head = h('div');
    const body = h('div');
    root.append(head, body);
    const draw = async () => {
      const [rule, page, history] = await Promise.all([
        api(`/v1/rules/${enc}`),
        api(`/v1/rules/${enc}/partitions?limit=50${after !== null ? `&after=${encodeURIComponent(after)}` : ''}`)
          .catch((e) => ({ error: e.message })),
        api(`/v1/rules/${enc}/history?limit=20`).catch(() => []),
      ]);
      refill(head,
        h('p', {}, h('a', { href: '#/rules' }, '← All rules')),
        h('h1', {}, `Rule ${rule.name} `, statusBadge(rule.status, rule.suspended_reason)),
        h('div', { class: 'toolbar' }, controlButton(rule, draw),
          h('a', { class: 'button', href: hashWith('#/timeline', { rule: rule.name }) }, 'Timeline of this rule'),
          h('a', { class: 'button', href: hashWith('#/dead', { rule: rule.name }) }, `Dead letters (${rule.dead_letters})`)));
      const c = rule.counters || {};
      const cards = h('div', { class: 'cards' },
        h('section', { class: 'card', 'aria-labelledby': 'trigger-h' },
          h('h2', { id: 'trigger-h' }, 'Trigger'),
          h('p', {}, rule.trigger_text || rule.kind),
          h('dl', { class: 'facts' },
            h('dt', {}, 'Kind'), h('dd', {}, rule.kind),
            h('dt', {}, 'Version'), h('dd', {}, rule.version),
            h('dt', {}, 'Deployed'), h('dd', {}, timeCell(rule.deployed_at)),
            h('dt', {}, 'Component'), h('dd', { class: 'mono' }, rule.digest.slice(0, 16)),
            rule.node ? [h('dt', {}, 'Node'), h('dd', { class: 'mono' }, rule.node)] : null)),
        h('section', { class: 'card', 'aria-labelledby': 'counters-h' },
          h('h2', { id: 'counters-h' }, 'Counters'),
          h('dl', { class: 'facts' },
            [['Events kept', c.matched], ['Fires created', c.fires_created], ['Fires completed', c.fires_ok],
              ['Failed attempts', c.fires_failed], ['Dead-lettered', c.dead_lettered], ['Pending fires', rule.pending_fires],
              ['Running now', rule.running_fires], ['Skipped events', c.skipped_events], ['Outputs dropped', c.outputs_dropped],
              ['Fuel used', rule.fuel_used]].map(([k, v]) => [h('dt', {}, k), h('dd', {}, fmtInt(v))]))),
        rule.kind === 'schedule' ? h('section', { class: 'card', 'aria-labelledby': 'ticks-h' },
          h('h2', { id: 'ticks-h' }, 'Schedule'),
          h('dl', { class: 'facts' },
            h('dt', {}, 'Ticks skipped'), h('dd', {}, fmtInt(c.ticks_skipped)),
            h('dt', {}, 'Ticks missed'), h('dd', {}, fmtInt(c.ticks_missed))),
          h('h3', {}, 'Next ticks'),
          page.next_ticks?.length
            ? h('ol', {}, page.next_ticks.map((t) => h('li', {}, timeCell(t))))
            : h('p', { class: 'empty' }, 'none known (paused, or no tick left)')) : null,
        rule.last_failure ? h('section', { class: 'card', 'aria-labelledby': 'failure-h' },
          h('h2', { id: 'failure-h' }, 'Last failed attempt'),
          h('dl', { class: 'facts' },
            h('dt', {}, 'Fire'), h('dd', {}, h('a', { href: `#/fires/${encodeURIComponent(rule.last_failure.fire_id)}` }, rule.last_failure.fire_id)),
            h('dt', {}, 'Attempt'), h('dd', {}, rule.last_failure.attempt),
            h('dt', {}, 'At'), h('dd', {}, timeCell(rule.last_failure.at))),
          json(rule.last_failure.message),
          rule.last_failure.backtrace ? [h('h3', {}, 'Guest backtrace'), json(rule.last_failure.backtrace)] : null,
          rule.last_failure.stderr?.length ? [h('h3', {}, 'Guest stderr'), json(rule.last_failure.stderr.join('\n'))] : null) : null,
        rule.last_error ? h('section', { class: 'card', 'aria-labelledby': 'error-h' },
          h('h2', { id: 'error-h' }, 'Last error'), json(rule.last_error)) : null);
      const parts = page.error
        ? h('p', { class: 'empty' }, `Partitions unavailable: ${page.error}`)
        : [
          h('p', {}, `${fmtInt(page.total)} open partition${page.total === 1 ? '' : 's'}`,
            page.partitions.length ? `; showing ${page.partitions.length}${after !== null ? ' after ' + JSON.stringify(after) : ''}` : ''),
          page.partitions.length ? h('div', { class: 'scroll' }, h('table', {},
            h('thead', {}, h('tr', {}, ['Partition', 'State', 'Next deadline'].map((t) => h('th', { scope: 'col' }, t)))),
            h('tbody', {}, page.partitions.map((p) => h('tr', {},
              h('th', { scope: 'row', class: 'mono' }, p.partition ?? '(global)'),
              h('td', {}, partitionState(rule.kind, p)),
              h('td', {}, timeCell(p.deadline))))))) : null,
          h('div', { class: 'toolbar' },
            after !== null ? h('a', { class: 'button', href: `#/rules/${enc}` }, 'First page') : null,
            page.next_after !== null && page.next_after !== undefined
              ? h('a', { class: 'button', href: hashWith(`#/rules/${enc}`, { after: page.next_after }) }, 'Next page') : null),
        ];
      const hist = history.length
        ? h('div', { class: 'scroll' }, h('table', {},
          h('thead', {}, h('tr', {}, ['When', 'What', 'Version', 'Details'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, history.map((e) => h('tr', {},
            h('td', {}, timeCell(e.time)),
            h('td', {}, e.kind),
            h('td', {}, e.payload?.previous ? `${e.payload.previous.version} → ${e.payload.version}` : (e.payload?.version ?? '')),
            h('td', {}, short(e.payload?.error ?? e.payload?.why ?? (e.payload?.digest ? `component ${String(e.payload.digest).slice(0, 12)}` : ''), 100)))))))
        : h('p', { class: 'empty' }, 'No swaps, resets or failures recorded.');
      refill(body, cards,
        h('h2', {}, 'Open partitions'), parts,
        h('h2', {}, 'History (swaps, resets, failures)'), hist);
    };
    await draw();
    every(5000, draw);
  }

  // --- fires ---------------------------------------------------------------

  /** Discard buttons clicked once, waiting for the confirming click (a
   * refresh of the view keeps them so). */
  const armed = new Map();

  function fireActions(fire, after) {
    if (fire.status !== 'dead') return null;
    const id = encodeURIComponent(fire.fire_id);
    const isArmed = Date.now() - (armed.get(fire.fire_id) || 0) < 15000;
    const discard = h('button', {
      type: 'button', class: 'danger', 'data-key': `discard-${fire.fire_id}`,
      'aria-label': isArmed ? `Confirm discard of ${fire.fire_id}` : `Discard ${fire.fire_id}`,
      onclick: async (ev) => {
        const b = ev.currentTarget;
        if (!armed.has(fire.fire_id) || Date.now() - armed.get(fire.fire_id) >= 15000) {
          armed.set(fire.fire_id, Date.now());
          b.textContent = 'Confirm discard';
          b.setAttribute('aria-label', `Confirm discard of ${fire.fire_id}`);
          return;
        }
        armed.delete(fire.fire_id);
        b.disabled = true;
        try {
          await api(`/v1/fires/${id}`, { method: 'DELETE' });
          say(`Dead letter ${fire.fire_id} discarded.`);
          await after();
        } catch (e) { failed(e); }
      },
    }, isArmed ? 'Confirm discard' : 'Discard');
    return h('span', { class: 'toolbar' },
      h('button', {
        type: 'button', 'data-key': `redrive-${fire.fire_id}`, 'aria-label': `Re-drive ${fire.fire_id}`,
        onclick: async (ev) => {
          ev.currentTarget.disabled = true;
          try {
            await api(`/v1/fires/${id}/redrive`, { method: 'POST' });
            say(`Fire ${fire.fire_id} re-driven: it runs again.`);
            await after();
          } catch (e) { failed(e); }
        },
      }, 'Re-drive'),
      discard);
  }

  function eventsTable(events, caption) {
    return h('div', { class: 'scroll' }, h('table', {},
      caption ? h('caption', { class: 'empty' }, caption) : null,
      h('thead', {}, h('tr', {}, ['Seq', 'Time', 'Source', 'Kind', 'Payload'].map((t, i) => h('th', { scope: 'col', class: i === 0 ? 'num' : null }, t)))),
      h('tbody', {}, events.map((e) => h('tr', {},
        h('td', { class: 'num' }, e.seq),
        h('td', {}, timeCell(e.time)),
        h('td', {}, e.source),
        h('td', {}, e.kind),
        h('td', {}, h('details', {}, h('summary', { 'data-row': true }, short(e.payload, 80)), json(e.payload))))))));
  }

  async function fireView(root, id) {
    document.title = `Fire ${id} · Sluice`;
    const draw = async () => {
      const f = await api(`/v1/fires/${encodeURIComponent(id)}`);
      const records = f.records || [];
      refill(root,
        h('p', {}, h('a', { href: hashWith('#/timeline', { rule: f.rule }) }, `← Timeline of ${f.rule}`)),
        h('h1', {}, `Fire ${f.fire_id} `, statusBadge(f.status)),
        fireActions(f, draw),
        h('dl', { class: 'facts' },
          h('dt', {}, 'Rule'), h('dd', {}, h('a', { href: `#/rules/${encodeURIComponent(f.rule)}` }, f.rule)),
          h('dt', {}, 'Partition'), h('dd', { class: 'mono' }, f.partition ?? '(global)'),
          h('dt', {}, 'Reason'), h('dd', {}, reasonText(f.reason)),
          h('dt', {}, 'Attempts'), h('dd', {}, f.attempts ?? '—'),
          h('dt', {}, 'At'), h('dd', {}, timeCell(f.at)),
          f.retry_at ? [h('dt', {}, 'Next attempt'), h('dd', {}, timeCell(f.retry_at))] : null,
          f.error ? [h('dt', {}, 'Last error'), h('dd', {}, f.error)] : null),
        h('h2', {}, `Batch (${fmtInt(f.batch_size)} event${f.batch_size === 1 ? '' : 's'})`),
        f.events.length ? eventsTable(f.events, f.batch_size > f.events.length ? `the first ${f.events.length} of ${fmtInt(f.batch_size)}` : null)
          : h('p', { class: 'empty' }, f.batch_size ? 'The events are no longer in the log (pruned).' : 'Not recorded for this fire.'),
        h('h2', {}, 'Attempts'),
        records.length ? h('ol', {}, records.map((r) => h('li', {},
          h('strong', {}, r.kind), ' at ', timeCell(r.time),
          r.payload?.attempt || r.payload?.attempts ? ` (attempt ${r.payload.attempt ?? r.payload.attempts})` : '',
          r.payload?.error ? json(r.payload.error) : null,
          r.payload?.backtrace ? h('details', {}, h('summary', {}, 'Guest backtrace'), json(r.payload.backtrace)) : null,
          r.payload?.stderr?.length ? h('details', {}, h('summary', {}, 'Guest stderr'), json(r.payload.stderr.join('\n'))) : null,
          r.payload?.logs?.length && r.kind !== 'fire.completed' ? h('details', {}, h('summary', {}, 'Guest logs'), json(r.payload.logs.join('\n'))) : null)))
          : h('p', { class: 'empty' }, 'No attempt finished yet.'),
        h('h2', {}, `Outputs (${f.outputs.length})`),
        f.outputs.length ? eventsTable(f.outputs) : h('p', { class: 'empty' }, 'None.'),
        h('h2', {}, 'Guest logs'),
        f.logs.length ? json(f.logs.join('\n')) : h('p', { class: 'empty' }, 'The handler wrote nothing.'));
    };
    await draw();
    every(5000, draw);
  }

  async function deadView(root) {
    document.title = 'Dead letters · Sluice';
    const rule = params().get('rule') || '';
    const box = h('div');
    root.append(h('h1', {}, rule ? `Dead letters of ${rule}` : 'Dead letters'),
      rule ? h('p', {}, h('a', { href: '#/dead' }, 'All rules')) : null, box);
    const draw = async () => {
      const q = new URLSearchParams({ status: 'dead' });
      if (rule) q.set('rule', rule);
      const fires = await api(`/v1/fires?${q}`);
      if (!fires.length) return refill(box, h('p', { class: 'empty' }, 'No dead letters.'));
      refill(box, h('div', { class: 'scroll' }, h('table', {},
        h('thead', {}, h('tr', {}, ['Fire', 'Rule', 'Partition', 'Attempts', 'Error', 'Created', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, fires.map((f) => h('tr', {},
          h('th', { scope: 'row', class: 'mono' }, h('a', { href: `#/fires/${encodeURIComponent(f.fire_id)}`, 'data-row': true, 'data-key': `fire-${f.fire_id}` }, f.fire_id)),
          h('td', {}, h('a', { href: `#/rules/${encodeURIComponent(f.rule)}` }, f.rule)),
          h('td', { class: 'mono' }, f.partition ?? '(global)'),
          h('td', { class: 'num' }, f.attempts),
          h('td', {}, short(f.error, 100)),
          h('td', {}, timeCell(f.at)),
          h('td', {}, fireActions(f, draw))))))));
    };
    await draw();
    every(5000, draw);
  }

  // --- the live timeline ------------------------------------------------------

  function describeItem(type, data) {
    const p = data.payload || {};
    const fire = p.fire_id || (data.id?.startsWith('sluice:f_') ? data.id.slice(7).split('.')[0] : null);
    let text = data.kind;
    if (type === 'fire' || type === 'error') {
      text = `${data.kind} ${p.rule ? `· ${p.rule}` : ''}${p.partition ? ` · ${p.partition}` : ''}`;
      if (data.kind === 'fire.completed') text += ` · ${p.seqs ? `${p.seqs.length} events → ` : ''}${p.outputs} output${p.outputs === 1 ? '' : 's'}`;
      if (p.error) text += ` · ${short(p.error, 80)}`;
    } else if (type === 'output') {
      text = `${data.kind} · ${short(data.payload, 100)}`;
    } else {
      text = `${data.kind} · ${short(data.payload, 100)}`;
    }
    return { fire, text, partition: p.partition ?? null };
  }

  async function timelineView(root) {
    document.title = 'Timeline · Sluice';
    const q = params();
    const f = {
      rule: q.get('rule') || '', partition: q.get('partition') || '', kind: q.get('kind') || '',
      source: q.get('source') || '', type: q.get('type') || '', from: q.get('from') || '',
    };
    const rules = await api('/v1/rules').catch(() => []);
    const field = (name, label, input) => h('label', { for: `f-${name}` }, label, input);
    const inputs = {
      rule: h('select', { id: 'f-rule', name: 'rule' }, h('option', { value: '' }, 'all rules'),
        rules.map((r) => h('option', { value: r.name, selected: r.name === f.rule }, r.name))),
      partition: h('input', { id: 'f-partition', name: 'partition', value: f.partition, placeholder: 'any' }),
      kind: h('input', { id: 'f-kind', name: 'kind', value: f.kind, placeholder: 'any' }),
      source: h('input', { id: 'f-source', name: 'source', value: f.source, placeholder: 'any' }),
      type: h('select', { id: 'f-type', name: 'type' }, ['', 'event', 'output', 'fire', 'error', 'record'].map((t) =>
        h('option', { value: t, selected: t === f.type }, t || 'all types'))),
      from: h('input', { id: 'f-from', name: 'from', value: f.from, placeholder: 'live', inputmode: 'numeric', size: 8 }),
    };
    const form = h('form', {
      class: 'filters', 'aria-label': 'Timeline filters',
      onsubmit: (ev) => {
        ev.preventDefault();
        const v = Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value.trim()]));
        location.hash = hashWith('#/timeline', v);
      },
    },
    field('rule', 'Rule', inputs.rule), field('partition', 'Partition', inputs.partition),
    field('kind', 'Kind', inputs.kind), field('source', 'Source', inputs.source),
    field('type', 'Type', inputs.type), field('from', 'From seq', inputs.from),
    h('button', { type: 'submit', class: 'primary' }, 'Apply'));

    const items = []; // newest first
    let incoming = [];
    let received = 0;
    let skipped = 0;
    let paused = false;
    let held = 0;
    let conn = 'connecting';
    let selected = null;
    const counts = h('p', { class: 'counts', role: 'status', 'aria-live': 'off' });
    const pause = h('button', {
      type: 'button', 'aria-pressed': 'false',
      onclick: () => {
        paused = !paused;
        pause.setAttribute('aria-pressed', String(paused));
        pause.textContent = paused ? 'Resume stream' : 'Pause stream';
        if (!paused) held = 0;
        schedule();
      },
    }, 'Pause stream');
    const list = h('div', { class: 'timeline', role: 'list', 'aria-label': 'Live timeline, newest first', tabindex: '-1' });
    const spacer = h('div', { class: 'spacer' });
    list.append(spacer);
    const inspector = h('section', { 'aria-label': 'Selected item', 'aria-live': 'polite' });
    root.append(h('h1', {}, 'Live timeline'), form,
      h('div', { class: 'timeline-bar' }, pause, counts), list, inspector);
    root.dataset.virtual = '1';
    state.cleanups.push(() => delete root.dataset.virtual);

    const wanted = (type, d) => {
      if (f.type && f.type !== type) return false;
      if (f.partition) {
        const part = d.payload?.partition;
        if (part !== f.partition) return false;
      }
      return true;
    };

    function show(item) {
      selected = item.seq;
      const d = item.data;
      inspector.replaceChildren(h('h2', {}, `${item.type} ${d.seq}: ${d.kind}`),
        item.fire ? h('p', {}, h('a', { href: `#/fires/${encodeURIComponent(item.fire)}` }, `Open fire ${item.fire}`)) : null,
        h('dl', { class: 'facts' },
          h('dt', {}, 'Source'), h('dd', {}, d.source),
          h('dt', {}, 'Id'), h('dd', { class: 'mono' }, d.id),
          h('dt', {}, 'Time'), h('dd', {}, timeCell(d.time)),
          h('dt', {}, 'Ingested'), h('dd', {}, timeCell(d.ingested))),
        json(d.payload));
      render();
    }

    function rowFor(item, i) {
      const attrs = {
        class: 'row-inner', 'data-row': true, 'data-index': i,
        'aria-current': item.seq === selected ? 'true' : null,
      };
      const kids = [
        h('span', { class: 'mono' }, clockTime(item.data.time)),
        h('span', { class: `type ${item.type}` }, item.type),
        h('span', { class: 'mono col-seq' }, `#${item.seq}`),
        h('span', { class: 'col-source' }, item.data.source),
        h('span', {}, item.text),
      ];
      const inner = item.fire && (item.type === 'fire' || item.type === 'error' || item.type === 'output')
        ? h('a', { ...attrs, href: `#/fires/${encodeURIComponent(item.fire)}` }, kids)
        : h('button', { ...attrs, type: 'button', onclick: () => show(item) }, kids);
      return h('div', { class: 'row', role: 'listitem', style: { top: `${i * ROW_H}px` } }, inner);
    }

    let frame = 0;
    function schedule() {
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; flush(); });
    }

    function flush() {
      if (!paused && incoming.length) {
        const fresh = incoming.reverse();
        incoming = [];
        const before = list.scrollTop;
        items.unshift(...fresh);
        if (items.length > TIMELINE_CAP) {
          skipped += items.length - TIMELINE_CAP;
          items.length = TIMELINE_CAP;
        }
        // Keep what the reader looks at in place when scrolled down.
        if (before > 0) list.scrollTop = before + fresh.length * ROW_H;
      }
      render();
    }

    function render() {
      spacer.style.height = `${items.length * ROW_H}px`;
      const top = list.scrollTop;
      const first = Math.max(0, Math.floor(top / ROW_H) - 5);
      const last = Math.min(items.length, Math.ceil((top + list.clientHeight) / ROW_H) + 5);
      const focused = document.activeElement?.dataset?.index;
      const rows = [];
      for (let i = first; i < last; i++) rows.push(rowFor(items[i], i));
      if (!items.length) {
        rows.push(h('p', { class: 'empty', role: 'listitem' }, paused ? 'Paused.'
          : f.from ? 'Nothing matches yet.' : 'Waiting for what comes next (set "From seq" to replay the log from a seq).'));
      }
      spacer.replaceChildren(...rows);
      if (focused !== undefined && !list.contains(document.activeElement)) {
        spacer.querySelector(`[data-index="${focused}"]`)?.focus({ preventScroll: true });
      }
      counts.textContent = `${conn} · received ${fmtInt(received)} · showing ${fmtInt(items.length)}`
        + `${skipped ? ` · ${fmtInt(skipped)} skipped (the newest ${fmtInt(TIMELINE_CAP)} are kept)` : ''}`
        + `${paused ? ` · paused, ${fmtInt(held)} waiting` : ''}`;
    }

    list.addEventListener('scroll', () => schedule());
    root.addEventListener('rowkey', (ev) => {
      const at = Number(document.activeElement?.dataset?.index ?? -1);
      const next = ev.detail === 'j' ? at + 1 : at - 1;
      if (next < 0 || next >= items.length) return;
      list.scrollTop = Math.max(0, next * ROW_H - list.clientHeight / 2);
      render();
      spacer.querySelector(`[data-index="${next}"]`)?.focus({ preventScroll: true });
    });

    const query = new URLSearchParams();
    if (f.rule) query.set('rule', f.rule);
    if (f.kind) query.set('kind', f.kind);
    if (f.source) query.set('source', f.source);
    if (f.from) query.set('after_seq', f.from); else query.set('live', 'true');
    follow(query.toString(), (type, seq, raw) => {
      let data;
      try { data = JSON.parse(raw); } catch { return; }
      received++;
      if (!wanted(type, data)) return;
      const d = describeItem(type, data);
      incoming.push({ type, seq: Number(seq ?? data.seq), data, ...d });
      if (paused) {
        held++;
        if (incoming.length > TIMELINE_CAP) {
          skipped += incoming.length - TIMELINE_CAP;
          incoming.splice(0, incoming.length - TIMELINE_CAP);
        }
      }
      schedule();
    }, (s) => { conn = s; schedule(); });
    render();
  }

  // --- events ------------------------------------------------------------------

  function localInput(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    if (isNaN(d)) return '';
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
  }

  async function eventsView(root) {
    document.title = 'Events · Sluice';
    const q = params();
    const inputs = {
      since: h('input', { id: 'e-since', type: 'datetime-local', value: localInput(q.get('since')) }),
      until: h('input', { id: 'e-until', type: 'datetime-local', value: localInput(q.get('until')) }),
      kind: h('input', { id: 'e-kind', value: q.get('kind') || '', placeholder: 'any' }),
      source: h('input', { id: 'e-source', value: q.get('source') || '', placeholder: 'any' }),
    };
    const iso = (v) => (v ? new Date(v).toISOString() : '');
    const form = h('form', {
      class: 'filters', 'aria-label': 'Event filters',
      onsubmit: (ev) => {
        ev.preventDefault();
        location.hash = hashWith('#/events', {
          since: iso(inputs.since.value), until: iso(inputs.until.value),
          kind: inputs.kind.value.trim(), source: inputs.source.value.trim(),
        });
      },
    },
    h('label', { for: 'e-since' }, 'Since', inputs.since),
    h('label', { for: 'e-until' }, 'Until', inputs.until),
    h('label', { for: 'e-kind' }, 'Kind', inputs.kind),
    h('label', { for: 'e-source' }, 'Source', inputs.source),
    h('button', { type: 'submit', class: 'primary' }, 'Search'));
    root.append(h('h1', {}, 'Events'), form);
    const query = new URLSearchParams({ limit: '100' });
    for (const k of ['since', 'until', 'kind', 'source', 'after_seq']) if (q.get(k)) query.set(k, q.get(k));
    const page = await api(`/v1/events?${query}`);
    root.append(page.events.length ? eventsTable(page.events, `${page.events.length} event${page.events.length === 1 ? '' : 's'}, oldest first`)
      : h('p', { class: 'empty' }, 'No events match.'));
    const next = Object.fromEntries(q.entries());
    if (page.next_after_seq) {
      next.after_seq = page.next_after_seq;
      root.append(h('div', { class: 'toolbar' }, h('a', { class: 'button', href: hashWith('#/events', next) }, 'Next page')));
    }
  }

  // --- charts ----------------------------------------------------------------

  const PALETTE = ['#1d4e89', '#b3541e', '#17622d', '#7b2d8e', '#a11d1d', '#00707a', '#5c5c00', '#505a66'];
  const DASHES = [[], [6, 3], [2, 2], [10, 4, 2, 4], [1, 3], [8, 8], [4, 1], [12, 2]];

  function chart(box, title, xs, series, unit) {
    const style = getComputedStyle(box);
    const inner = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const width = Math.max(260, Math.floor(inner) || 560);
    const opts = {
      title, width, height: 220,
      scales: { x: { time: true } },
      axes: [{}, { label: unit, size: 60 }],
      series: [{ label: 'minute' }, ...series.map((s, i) => ({
        label: s.label, stroke: PALETTE[i % PALETTE.length], dash: DASHES[i % DASHES.length], width: 2, spanGaps: false,
        // A minute alone (no neighbour to draw a line to) still shows.
        points: { show: true, size: 5, fill: PALETTE[i % PALETTE.length] },
      }))],
    };
    const data = [xs.map((m) => m / 1000), ...series.map((s) => s.values)];
    const el = h('div', { class: 'chart', role: 'img', 'aria-label': `${title}: chart; the data follows as a table` });
    box.append(el);
    if (window.uPlot) new window.uPlot(opts, data, el);
    const rows = xs.map((m, i) => [m, ...series.map((s) => s.values[i])]).filter((r) => r.slice(1).some((v) => v !== null && v !== 0));
    box.append(h('details', {}, h('summary', {}, `${title}: data`),
      rows.length ? h('div', { class: 'scroll' }, h('table', {},
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Minute'), series.map((s) => h('th', { scope: 'col', class: 'num' }, s.label)))),
        h('tbody', {}, rows.map((r) => h('tr', {}, h('td', {}, fmtTime(r[0])),
          r.slice(1).map((v) => h('td', { class: 'num' }, v === null ? '—' : Number(v.toFixed ? v.toFixed(2) : v).toLocaleString('en-US'))))))))
        : h('p', { class: 'empty' }, 'Nothing in these minutes.')));
  }

  async function chartsView(root) {
    document.title = 'Charts · Sluice';
    const box = h('div', { class: 'cards charts' });
    root.append(h('h1', {}, 'Charts (the last hour, per minute)'), box);
    const draw = async () => {
      const s = await api('/v1/stats?minutes=60');
      const busiest = [...s.rules].sort((a, b) => b.fires.reduce((x, y) => x + y, 0) - a.fires.reduce((x, y) => x + y, 0)).slice(0, 8);
      const cards = ['Fires per minute', 'Handler latency p50 / p99 (ms)', 'Timer lateness p99 (ms)', 'Events ingested per minute']
        .map((t) => h('section', { class: 'card', 'aria-label': t }));
      box.replaceChildren(...cards);
      chart(cards[0], 'Fires per minute', s.minutes, busiest.map((r) => ({ label: r.rule, values: r.fires })), 'fires');
      chart(cards[1], 'Handler latency p50 / p99 (ms)', s.minutes, busiest.slice(0, 4).flatMap((r) => [
        { label: `${r.rule} p50`, values: r.latency_p50_ms }, { label: `${r.rule} p99`, values: r.latency_p99_ms }]), 'ms');
      chart(cards[2], 'Timer lateness p99 (ms)', s.minutes, busiest.map((r) => ({ label: r.rule, values: r.lateness_p99_ms })), 'ms');
      chart(cards[3], 'Events ingested per minute', s.minutes, [{ label: 'events', values: s.ingest }], 'events');
    };
    await draw();
    every(15000, draw);
  }

  // --- admin ----------------------------------------------------------------

  async function adminView(root) {
    document.title = 'Tenants and nodes · Sluice';
    const created = h('div', { 'aria-live': 'polite' });
    const name = h('input', { id: 'new-tenant', name: 'name', required: true, pattern: '[a-z0-9][a-z0-9_-]*' });
    const tenantsBox = h('div');
    const nodesBox = h('div');
    const draw = async () => {
      const [tenants, cluster] = await Promise.all([
        api('/v1/tenants'),
        api('/v1/cluster').catch((e) => ({ alone: e.message })),
      ]);
      refill(tenantsBox, tenants.length ? h('div', { class: 'scroll' }, h('table', {},
        h('thead', {}, h('tr', {}, ['Tenant', 'Created', 'Max rules', 'Status'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, tenants.map((t) => h('tr', {},
          h('th', { scope: 'row' }, t.name),
          h('td', {}, timeCell(t.created_at)),
          h('td', { class: 'num' }, t.quotas?.max_rules),
          h('td', {}, t.deleted_at ? statusBadge('failed', 'deleted') : statusBadge('active')))))))
        : h('p', { class: 'empty' }, 'No tenants yet.'));
      refill(nodesBox, cluster.alone ? h('p', {}, `One node: ${cluster.alone}`)
        : h('div', { class: 'scroll' }, h('table', {},
          h('caption', { class: 'empty' }, `This node: ${cluster.node}; lease TTL ${cluster.lease_ttl_ms} ms`),
          h('thead', {}, h('tr', {}, ['Node', 'Address', 'State', 'Started', 'Last heartbeat', 'Rules held'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, cluster.nodes.map((n) => h('tr', {},
            h('th', { scope: 'row', class: 'mono' }, n.id),
            h('td', {}, n.addr),
            h('td', {}, n.live ? statusBadge('active', 'live') : statusBadge('failed', 'not beating')),
            h('td', {}, timeCell(n.started)), h('td', {}, timeCell(n.heartbeat)),
            h('td', { class: 'num' }, h('span', { title: (n.rules || []).join(', ') }, fmtInt((n.rules || []).length)))))))));
    };
    root.append(h('h1', {}, 'Tenants and nodes'),
      h('form', {
        class: 'filters', 'aria-label': 'Create a tenant',
        onsubmit: async (ev) => {
          ev.preventDefault();
          try {
            const t = await api('/v1/tenants', {
              method: 'POST', headers: { 'content-type': 'application/json' },
              body: JSON.stringify({ name: name.value.trim() }),
            });
            created.replaceChildren(h('p', { class: 'notice' }, `Tenant ${t.tenant.name} created. Its token (shown once): `,
              h('code', {}, t.token.token)));
            name.value = '';
            await draw();
          } catch (e) { failed(e); }
        },
      }, h('label', { for: 'new-tenant' }, 'New tenant', name), h('button', { type: 'submit', class: 'primary' }, 'Create')),
      created,
      h('h2', {}, 'Tenants'), tenantsBox,
      h('h2', {}, 'Nodes'), nodesBox);
    await draw();
    every(5000, draw);
  }

  route();
})();
