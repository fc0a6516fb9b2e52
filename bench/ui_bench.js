// The web view's latencies as an investigator sees them, in Debian's headless
// Chromium driven by playwright-core (bench/ui.sh runs it):
//   node bench/ui_bench.js BASE_URL PG_URL USER PASSWORD INGEST_TOKEN [REPETITIONS]
// 1. an actor's 7-day timeline: from the navigation's start until its first
//    rows (up to 100) are in the page, over the busiest actors in turn;
// 2. the events view over every organisation's last 7 days;
// 3. a new event: from sending it (POST /v1/events) until a reload of its
//    actor's timeline shows it;
// 4. the gzipped bytes of the view's JavaScript and CSS.
'use strict';

const zlib = require('zlib');
const { Client } = require('pg');
const { chromium } = require('playwright-core');

const [base, pgUrl, user, password, ingestToken, repetitionsText] = process.argv.slice(2);
const repetitions = Number(repetitionsText || 31);

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function summary(name, millis) {
  const sorted = [...millis].sort((a, b) => a - b);
  const line = `${name}: n=${sorted.length} p50=${percentile(sorted, 50).toFixed(0)} ms p95=${percentile(sorted, 95).toFixed(0)} ms max=${sorted[sorted.length - 1].toFixed(0)} ms`;
  console.log(line);
  return line;
}

(async () => {
  const sql = new Client({ connectionString: pgUrl });
  await sql.connect();
  // The actors with the most events in the last 7 days, each with the rows
  // its timeline's first page should show.
  const busiest = await sql.query(
    "select org_id, actor_id, count(*)::int as n from audit_events where time >= now() - interval '7 days' " +
      "and category is distinct from 'audit_access' group by org_id, actor_id order by n desc limit 10",
  );
  await sql.end();
  const actors = busiest.rows;
  console.log(`actors: ${actors.map((a) => `${a.actor_id} (${a.n})`).join(', ')}`);

  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(`${base}/ui/sign-in`);
  await page.fill('#user', user);
  await page.fill('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);

  // Warm-up: one of each, not counted.
  await page.goto(`${base}/ui/timeline?actor=${encodeURIComponent(actors[0].actor_id)}`);
  const timeline = [];
  for (let i = 0; i < repetitions; i += 1) {
    const actor = actors[i % actors.length];
    const wanted = Math.min(100, actor.n);
    const started = Date.now();
    await page.goto(`${base}/ui/timeline?actor=${encodeURIComponent(actor.actor_id)}`, { waitUntil: 'commit' });
    await page.waitForFunction((n) => document.querySelectorAll('tr[data-seq]').length >= n, wanted, { polling: 'raf' });
    timeline.push(Date.now() - started);
    const shown = await page.$$eval('tr[data-seq]', (rows) => rows.length);
    if (shown < wanted) throw new Error(`${actor.actor_id}: ${shown} rows, ${wanted} wanted`);
  }
  summary('actor 7-day timeline, navigation to first 100 rows visible', timeline);

  // The first page an investigator sees: every organisation's last 7 days,
  // with the histogram and the three facets over all of them.
  const events = [];
  for (let i = 0; i < 11; i += 1) {
    const started = Date.now();
    await page.goto(`${base}/ui/events`, { waitUntil: 'commit' });
    await page.waitForFunction(() => document.querySelectorAll('tr[data-seq]').length >= 100, null, { polling: 'raf' });
    events.push(Date.now() - started);
  }
  summary('events view, all organisations, last 7 days (histogram, 3 facets, 100 rows)', events);

  const visible = [];
  for (let i = 0; i < 10; i += 1) {
    const actor = `bench-new-${Date.now()}-${i}`;
    const started = Date.now();
    const sent = await fetch(`${base}/v1/events`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ingestToken}`, 'content-type': 'application/json' },
      body: JSON.stringify([{
        id: `${actor}-event`, time: new Date().toISOString(), org_id: actors[0].org_id, actor_id: actor,
        action: 'bench.event.created',
      }]),
    });
    if (sent.status !== 200) throw new Error(`POST answered ${sent.status}: ${await sent.text()}`);
    for (;;) {
      await page.goto(`${base}/ui/timeline?actor=${encodeURIComponent(actor)}`);
      if ((await page.$$('tr[data-seq]')).length === 1) break;
      if (Date.now() - started > 60000) throw new Error('the new event never showed');
    }
    visible.push(Date.now() - started);
  }
  summary('a new event, from POST to visible in its timeline', visible);

  let gzipped = 0;
  for (const asset of ['ui.js', 'ui.css']) {
    const body = Buffer.from(await (await fetch(`${base}/ui/assets/${asset}`)).arrayBuffer());
    const size = zlib.gzipSync(body, { level: 9 }).length;
    console.log(`${asset}: ${body.length} bytes, ${size} gzipped`);
    gzipped += size;
  }
  console.log(`JS and CSS together: ${gzipped} bytes gzipped`);
  await browser.close();
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
