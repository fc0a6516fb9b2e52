// node `pg` against auditlake: node_client.js URL ACTOR. Prints what it got.
const { Client } = require('pg');

(async () => {
  const client = new Client({ connectionString: process.argv[2] });
  await client.connect();
  const result = await client.query(
    'select action, count(*) as n, max(time) as last from audit_events where actor_id = $1 group by action order by action',
    [process.argv[3]],
  );
  console.log('node types', result.fields.map((f) => f.dataTypeID).join(','));
  for (const row of result.rows) {
    console.log('node', row.action, row.n, row.last.toISOString().replace('.000Z', 'Z'));
  }
  await client.end();
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
