// The web view in real headless Chromium (Debian's), driven by playwright-core:
// node browser_ui.js, with the test's facts as JSON in AUDITLAKE_UI_TEST (see
// tests/it/browser.rs). Prints one "ok ..." line per check and exits 1 at the
// first that fails. Every request the browser makes must go to the server or
// to this script's own host pages (the network guard).
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');
const { chromium } = require('playwright-core');

const facts = JSON.parse(process.env.AUDITLAKE_UI_TEST);
const base = facts.base; // http://127.0.0.1:PORT of auditlake
const axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
let checks = 0;

function ok(what) {
  checks += 1;
  console.log(`ok ${what}`);
}

function fail(what) {
  throw new Error(what);
}

function equal(got, want, what) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    fail(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

// A page that frames the embedded viewer, served from its own origin; it
// keeps every message the frame posts.
function hostPage(src) {
  return `<!doctype html><html lang="en"><head><title>vendor admin</title></head><body>
<h1>Vendor admin</h1><iframe id="viewer" title="audit log" src="${src}" width="1000" height="700"></iframe>
<script>window.messages = []; window.addEventListener('message', (e) => window.messages.push(e.data));</script>
</body></html>`;
}

function serveHost() {
  return new Promise((resolve) => {
    const server = http.createServer((request, response) => {
      const url = new URL(request.url, 'http://127.0.0.1');
      response.setHeader('content-type', 'text/html; charset=utf-8');
      response.end(hostPage(`${base}/embed?token=${encodeURIComponent(url.searchParams.get('token'))}`));
    });
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

async function rowsOf(frame) {
  return frame.$$eval('tr[data-seq]', (rows) =>
    rows.map((row) => ({ seq: Number(row.dataset.seq), cells: [...row.cells].map((c) => c.textContent.trim()) })),
  );
}

// axe-core from the local npm package, evaluated over the devtools protocol
// (the page's CSP allows no inline script): no serious or critical violation.
async function accessible(page, view) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    fail(`${view}: axe finds ${bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target).join(' ')}`).join('; ')}`);
  }
  ok(`${view}: no serious or critical axe violation (${result.violations.length} lesser)`);
}

async function screenshots(page, view) {
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: 900 });
    await page.screenshot({ path: path.join(facts.screenshots, `${view}-${width}.png`), fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
}

async function look(page, view) {
  await accessible(page, view);
  await screenshots(page, view);
}

async function signIn(page, user, password) {
  await page.goto(`${base}/ui/sign-in`);
  await page.fill('#user', user);
  await page.fill('#password', password);
  await page.click('button[type=submit]');
  await page.waitForURL(`${base}/ui/events`);
}

// Follows "Next page" links, collecting every row's seq.
async function allPages(page) {
  const seqs = [];
  for (;;) {
    seqs.push(...(await rowsOf(page)).map((row) => row.seq));
    const next = await page.$('a[rel=next]');
    if (!next) return seqs;
    await Promise.all([page.waitForNavigation(), next.click()]);
  }
}

(async () => {
  const hostAllowed = await serveHost();
  const hostRefused = await serveHost();
  const allowedOrigin = `http://127.0.0.1:${hostAllowed.address().port}`;
  const refusedOrigin = `http://127.0.0.1:${hostRefused.address().port}`;
  // The organisation allows the first host page's origin to frame its viewer.
  const policy = await fetch(`${base}/v1/orgs/acme/policy`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${facts.acme_admin_token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ ugc: 'store', embed_origins: [allowedOrigin] }),
  });
  equal(policy.status, 200, 'setting the embed allow-list');

  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const allowedHosts = new Set([new URL(base).host, new URL(allowedOrigin).host, new URL(refusedOrigin).host]);
  const strays = [];
  // A browser context whose every request outside those hosts is stopped
  // and remembered.
  async function guarded() {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await context.route('**/*', (route) => {
      const url = new URL(route.request().url());
      if (url.protocol === 'data:' || allowedHosts.has(url.host)) return route.continue();
      strays.push(url.href);
      return route.abort();
    });
    return context;
  }
  const context = await guarded();
  const page = await context.newPage();

  // Signed in as acme's analyst.
  await page.goto(`${base}/ui/sign-in`);
  await look(page, 'sign-in');
  await signIn(page, 'analyst', facts.password);
  await look(page, 'events');

  // The phished account's timeline, by keyboard only: Tab to the field,
  // type, Enter, and page on with the keyboard too.
  await page.goto(`${base}/ui/timeline`);
  let tabs = 0;
  while ((await page.evaluate(() => document.activeElement && document.activeElement.id)) !== 'actor') {
    await page.keyboard.press('Tab');
    tabs += 1;
    if (tabs > 40) fail('the actor field is not reachable by Tab');
  }
  await page.keyboard.type('acme-u007');
  await page.keyboard.press('Tab');
  await page.keyboard.type('created:2000-01-01..2100-01-01');
  await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
  const focusVisible = await page.evaluate(() => {
    const field = document.getElementById('actor');
    field.focus();
    const style = getComputedStyle(field);
    return style.outlineStyle !== 'none' && style.outlineWidth !== '0px';
  });
  if (!focusVisible) fail('the focused field shows no outline');
  ok(`keyboard only: the timeline search took ${tabs} Tabs, and focus is visible`);
  await look(page, 'timeline');
  const timeline = await allPages(page);
  equal(timeline, facts.timeline_seqs, 'the timeline of acme-u007, page after page');
  ok(`the phished account's timeline shows exactly its ${timeline.length} events, oldest first`);
  await page.goto(`${base}/ui/timeline?actor=acme-u007&rows=500&q=${encodeURIComponent('created:2000-01-01..2100-01-01')}`);
  const marked = await page.$$eval('tr[data-seq]', (rows) =>
    rows.filter((row) => row.textContent.includes('new IP')).map((row) => row.cells[4].textContent.trim()),
  );
  if (!marked.some((ip) => ip.startsWith('203.0.113.50'))) fail(`the attacker's address is not marked new: ${marked}`);
  ok("the attacker's address is marked as new");

  // Hostile probes, typed into the search box and put in the URL.
  for (const probe of facts.probes) {
    await page.goto(`${base}/ui/events`);
    await page.fill('#q', probe);
    await Promise.all([page.waitForNavigation(), page.press('#q', 'Enter')]);
    const rows = await rowsOf(page);
    const orgs = [...new Set(rows.map((row) => row.cells[1]))];
    if (orgs.some((org) => org !== 'acme')) fail(`typed ${probe}: rows of ${orgs}`);
    const text = await page.textContent('main');
    if (!probe.includes('globex') && text.includes('globex')) fail(`typed ${probe}: the page names globex`);
    await page.goto(`${base}/ui/events?q=${encodeURIComponent(probe)}&org=globex&org_id=globex`);
    const urlOrgs = [...new Set((await rowsOf(page)).map((row) => row.cells[1]))];
    if (urlOrgs.some((org) => org !== 'acme')) fail(`URL ${probe}: rows of ${urlOrgs}`);
  }
  const other = await page.goto(`${base}/ui/event/globex/${encodeURIComponent(facts.globex_event)}`);
  equal(other.status(), 404, "another organisation's event");
  ok(`${facts.probes.length} hostile searches, typed and in the URL, show acme only`);

  // A search refused names its token and position, under the box.
  await page.goto(`${base}/ui/events`);
  await page.fill('#q', 'actor:acme-u007 bogus:1');
  await Promise.all([page.waitForNavigation(), page.press('#q', 'Enter')]);
  const refusal = await page.textContent('[role=alert]');
  if (!refusal.includes('`bogus:1` at character 17')) fail(`refusal: ${refusal}`);
  ok('a refused search names its token and position');

  // The saved-query runner.
  await page.goto(`${base}/ui/saved`);
  await look(page, 'saved-queries');
  await page.fill('#actor_timeline-actor', 'acme-u007');
  await page.fill('#actor_timeline-since', '2000-01-01');
  await Promise.all([page.waitForNavigation(), page.click('form[action="/ui/saved/actor_timeline"] button')]);
  equal(await page.$$eval('tr.result', (rows) => rows.length), facts.timeline_seqs.length, 'saved query rows');
  await look(page, 'saved-query-result');
  await page.fill('#actor_timeline-since', 'last tuesday');
  await Promise.all([page.waitForNavigation(), page.click('form[action="/ui/saved/actor_timeline"] button')]);
  const inline = await page.textContent('#actor_timeline-since-error');
  if (!inline.includes('is not a date')) fail(`inline error: ${inline}`);
  ok('a saved query with parameters runs, and a bad parameter is refused next to its field');

  // An event and its proof: verified, then failed once a byte of its block
  // changed on disk.
  await page.goto(`${base}/ui/event/acme/${encodeURIComponent(facts.proof_event)}`);
  equal(await page.textContent('#proof-status'), 'verified', 'the proof before');
  await look(page, 'event');
  const segment = fs.readFileSync(facts.segment);
  segment[facts.flip_offset] ^= 0x01;
  fs.writeFileSync(facts.segment, segment);
  await page.reload();
  equal(await page.textContent('#proof-status'), 'failed', 'the proof after one byte changed');
  ok('the proof shows verified, then failed after one segment byte is flipped');

  // Who touched a piece of content, in an organisation that keeps content ids hashed.
  const hashedPage = await (await guarded()).newPage();
  await signIn(hashedPage, 'hasher', facts.password);
  await hashedPage.goto(`${base}/ui/content`);
  await hashedPage.fill('#id', facts.hashed_content);
  await hashedPage.fill('#q', 'created:2026-11-01..2026-12-01');
  await Promise.all([hashedPage.waitForNavigation(), hashedPage.press('#id', 'Enter')]);
  const touched = await rowsOf(hashedPage);
  equal(touched.map((row) => row.cells[2]).sort(), facts.hashed_actors, 'who touched the hashed content');
  if (!(await hashedPage.textContent('main')).includes('keeps content ids hashed')) fail('no word on the hash policy');
  await look(hashedPage, 'content');
  ok(`the hashed-content lookup finds its ${touched.length} events`);

  // The embedded viewer on a second loopback origin, allowed to frame it.
  const host = await context.newPage();
  await host.goto(`${allowedOrigin}/?token=${encodeURIComponent(facts.viewer_token)}`);
  const frame = host.frame({ url: /\/embed\?/ });
  await frame.waitForSelector('tr[data-seq]');
  const framed = await rowsOf(frame);
  if (!framed.length || framed.some((row) => row.cells[1] !== 'acme')) fail('the framed viewer shows others');
  for (const probe of facts.probes) {
    await frame.fill('#q', probe);
    await Promise.all([frame.waitForNavigation(), frame.press('#q', 'Enter')]);
    const orgs = [...new Set((await rowsOf(frame)).map((row) => row.cells[1]))];
    if (orgs.some((org) => org !== 'acme')) fail(`framed, typed ${probe}: rows of ${orgs}`);
  }
  ok('an acme viewer token in an iframe on a second origin never shows globex, whatever is typed');
  const viewerPage = await context.newPage();
  await viewerPage.goto(`${base}/embed?token=${encodeURIComponent(facts.viewer_token)}&q=${encodeURIComponent('globex')}&org=globex`);
  if ((await rowsOf(viewerPage)).some((row) => row.cells[1] !== 'acme')) fail('the viewer URL widened');
  await look(viewerPage, 'embed');

  // A page of another origin cannot frame it.
  const refused = await context.newPage();
  const blocked = [];
  refused.on('console', (message) => blocked.push(message.text()));
  await refused.goto(`${refusedOrigin}/?token=${encodeURIComponent(facts.viewer_token)}`);
  await refused.waitForTimeout(500);
  const refusedFrame = refused.frames().find((f) => f !== refused.mainFrame());
  const refusedRows = refusedFrame ? await refusedFrame.$$('tr[data-seq]').then((r) => r.length).catch(() => 0) : 0;
  equal(refusedRows, 0, 'rows in a frame of a disallowed origin');
  ok(`a disallowed origin cannot frame the viewer${blocked.some((m) => m.includes('frame-ancestors')) ? ' (Chromium: frame-ancestors)' : ''}`);

  // An expired token: its message, and the host page told.
  const expired = await context.newPage();
  await expired.goto(`${allowedOrigin}/?token=${encodeURIComponent(facts.expired_token)}`);
  const expiredFrame = expired.frame({ url: /\/embed\?/ });
  await expiredFrame.waitForSelector('[role=alert]');
  const said = await expiredFrame.textContent('[role=alert]');
  if (!said.includes('This view expired at')) fail(`expired: ${said}`);
  await expired.waitForFunction(() => window.messages.length > 0);
  const messages = await expired.evaluate(() => window.messages);
  equal(messages[0].type, 'auditlake.viewer.expired', 'the message to the host page');
  ok('an expired token shows its message and tells the host page');

  if (strays.length) fail(`requests to other hosts: ${strays.join(', ')}`);
  ok('the network guard saw no request to another host');
  await browser.close();
  hostAllowed.close();
  hostRefused.close();
  console.log(`all ${checks} checks passed`);
})().catch((error) => {
  console.error(`FAILED: ${error.message}`);
  process.exit(1);
});
