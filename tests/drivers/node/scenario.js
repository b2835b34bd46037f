// node-postgres through pgcat. Usage: node scenario.js URL MODE
//
// Prints `PASS <check>` or `FAIL <check>: <reason>` per check; exits 1 if any
// failed. node-postgres uses the simple protocol for queries without values
// and the extended protocol (unnamed, or named with `name`) for the rest.
'use strict';
const assert = require('node:assert/strict');
const { pipeline } = require('node:stream/promises');
const { Readable } = require('node:stream');
const { Client } = require('pg');
const copyStreams = require('pg-copy-streams');

const [URL, MODE] = process.argv.slice(2);
const DEFAULT_PATH = '"$user", public';
const checks = [];
const check = (name, fn) => checks.push([name, fn]);

async function connect(extra = {}) {
  const c = new Client({ connectionString: URL, connectionTimeoutMillis: 10000, ...extra });
  await c.connect();
  return c;
}

async function one(c, text, values) {
  return (await c.query({ text, values, rowMode: 'array' })).rows[0][0];
}

// Runs each [client, sql, want, who] twice in a row per round, one transaction
// each (the last inside BEGIN/COMMIT): with a FIFO pool of 2, two checkouts in
// a row reach both servers. Throws with every distinct mismatch seen.
async function rounds(list, n = 3) {
  const bad = new Set();
  for (let i = 0; i < n; i++) {
    for (const [c, sql, want, who] of list) {
      for (let j = 0; j < 2; j++) {
        if (i === n - 1) await c.query('BEGIN');
        const got = await one(c, sql);
        if (i === n - 1) await c.query('COMMIT');
        if (got !== want) bad.add(`${who} saw ${sql.split(' ').pop()}=${got} (want ${want})`);
      }
    }
  }
  if (bad.size) throw new Error([...bad].join('; '));
}

async function expectError(promise, code, what) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.code, code, `${what}: SQLSTATE`);
    return;
  }
  throw new Error(`${what} did not raise`);
}

check('basic', async (c) => {
  assert.equal(await one(c, 'SELECT 1'), 1);
  const r = await c.query("SELECT g, 'row ' || g AS t FROM generate_series(1, 3) g");
  assert.deepEqual(r.rows, [{ g: 1, t: 'row 1' }, { g: 2, t: 'row 2' }, { g: 3, t: 'row 3' }]);
  assert.equal(await one(c, 'SELECT current_user'), 'app');
  assert.equal(await one(c, 'SELECT current_database()'), 'app');
});

check('params', async (c) => {
  const cases = [
    ['int4', 42, 42], ['int8', '1099511627776', '1099511627776'], ['text', 'héllo ☃', 'héllo ☃'],
    ['float8', 1.5, 1.5], ['numeric', '12.345', '12.345'], ['bool', true, true], ['text', null, null],
    ['bytea', Buffer.from([0, 1, 255]), Buffer.from([0, 1, 255])], ['int4[]', [1, 2, 3], [1, 2, 3]],
    ['jsonb', JSON.stringify({ k: 'v' }), { k: 'v' }],
  ];
  for (const [type, value, want] of cases) {
    assert.deepEqual(await one(c, `SELECT $1::${type}`, [value]), want, `round trip of ${type}`);
  }
  assert.equal(await one(c, 'SELECT $1::date::text', ['2024-02-29']), '2024-02-29', 'date');
  assert.equal(await one(c, 'SELECT $1::int + $2::int', [2, 3]), 5, 'two params');
});

check('transactions', async (c) => {
  await c.query('BEGIN');
  await c.query("INSERT INTO node_items VALUES (1, 'committed')");
  await c.query('COMMIT');
  await c.query('BEGIN');
  await c.query('INSERT INTO node_items VALUES ($1, $2)', [2, 'rolled back']);
  await c.query('ROLLBACK');
  const r = await c.query({ text: 'SELECT id FROM node_items ORDER BY id', rowMode: 'array' });
  assert.deepEqual(r.rows, [[1]], 'rows after commit+rollback');
});

check('error-recovery', async (c) => {
  await c.query('BEGIN');
  await c.query("INSERT INTO node_items VALUES (3, 'lost')");
  await expectError(c.query('SELECT 1/$1::int', [0]), '22012', 'division by zero');
  await expectError(c.query('SELECT 1'), '25P02', 'statement in an aborted transaction');
  await c.query('ROLLBACK');
  assert.equal(await one(c, 'SELECT count(*)::int FROM node_items WHERE id = 3'), 0, 'rows from the failed transaction');
  await expectError(c.query({ name: 'bad', text: 'SELECT * FROM no_such_table WHERE id = $1', values: [1] }),
    '42P01', 'missing table (named statement)');
  assert.equal(await one(c, 'SELECT $1::int', [7]), 7, 'query after errors');
});

check('prepared', async (c) => {
  for (let i = 0; i < 50; i++) {
    const r = await c.query({ name: 'double', text: 'SELECT $1::int * 2 AS v', values: [i] });
    assert.equal(r.rows[0].v, i * 2, `prepared run ${i}`);
  }
});

check('batch', async (c) => {
  // 100 queued statements, named and parameterized, issued without waiting
  await Promise.all(Array.from({ length: 100 }, (_, i) =>
    c.query({ name: 'ins', text: 'INSERT INTO node_items VALUES ($1, $2)', values: [100 + i, 'batched'] })));
  // and 100 statements in one simple-protocol message
  const sql = Array.from({ length: 100 }, (_, i) => `INSERT INTO node_items VALUES (${200 + i}, 'multi')`).join(';');
  await c.query(sql);
  const r = await c.query("SELECT note, count(*)::int AS n FROM node_items WHERE note IN ('batched', 'multi') GROUP BY 1 ORDER BY 1");
  assert.deepEqual(r.rows, [{ note: 'batched', n: 100 }, { note: 'multi', n: 100 }]);
});

check('copy', async (c) => {
  const lines = Array.from({ length: 1000 }, (_, i) => `${1000 + i}\tcopy ${i}\n`);
  await pipeline(Readable.from(lines), c.query(copyStreams.from('COPY node_items (id, note) FROM STDIN')));
  assert.equal(await one(c, "SELECT count(*)::int FROM node_items WHERE note LIKE 'copy %'"), 1000, 'rows after COPY FROM');
  const chunks = [];
  const out = c.query(copyStreams.to("COPY (SELECT id, note FROM node_items WHERE note LIKE 'copy %' ORDER BY id) TO STDOUT"));
  for await (const chunk of out) chunks.push(chunk);
  const rows = Buffer.concat(chunks).toString().trimEnd().split('\n');
  assert.equal(rows.length, 1000, 'rows from COPY TO');
  assert.equal(rows[0], '1000\tcopy 0', 'first COPY TO row');
});

check('concurrency', async () => {
  const worker = async (n) => {
    const c = await connect();
    try {
      for (let i = 0; i < 100; i++) {
        if (i % 10 === 0) { // a transaction stays on one server
          await c.query('BEGIN');
          const pids = new Set();
          for (let k = 0; k < 3; k++) pids.add(await one(c, 'SELECT pg_backend_pid()'));
          await c.query('COMMIT');
          assert.equal(pids.size, 1, `worker ${n}: backends within one transaction`);
        }
        assert.equal(await one(c, 'SELECT $1::int + $2::int', [n, i]), n + i, `worker ${n} query ${i}`);
      }
    } finally {
      await c.end();
    }
  };
  const results = await Promise.allSettled([0, 1, 2, 3].map(worker));
  const errors = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message);
  if (errors.length) throw new Error(errors.join('; '));
});

if (MODE === 'session') {
  check('session-state', async (c) => {
    const pid = await one(c, 'SELECT pg_backend_pid()');
    await c.query('CREATE TEMP TABLE node_tmp AS SELECT 1 AS x');
    for (let i = 0; i < 3; i++) {
      assert.equal(await one(c, 'SELECT pg_backend_pid()'), pid, 'backend across transactions');
      assert.equal(await one(c, 'SELECT x FROM node_tmp'), 1, 'temp table across transactions');
    }
  });
}

// Runs fn with fresh clients, ending them whatever happens.
async function withClients(configs, fn) {
  const clients = [];
  try {
    for (const cfg of configs) clients.push(await connect(cfg));
    await fn(...clients);
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  }
}

check('isolation', () => withClients([{}, {}], async (a, b) => {
  await a.query('SET search_path TO some_schema'); // no values: simple protocol
  await a.query({ text: "SET statement_timeout = '1234ms'", queryMode: 'extended' });
  await rounds([[b, 'SHOW search_path', DEFAULT_PATH, 'B'], [b, 'SHOW statement_timeout', '0', 'B'],
    [a, 'SHOW search_path', 'some_schema', 'A'], [a, 'SHOW statement_timeout', '1234ms', 'A']]);
}));

check('isolation-set-config', () => withClients([{}, {}], async (a, b) => {
  assert.equal(await one(a, "SELECT set_config('work_mem', $1, false)", ['78kB']), '78kB');
  await rounds([[b, 'SHOW work_mem', '4MB', 'B'], [a, 'SHOW work_mem', '78kB', 'A']]);
}));

check('startup-options', () => withClients([{ options: '-c search_path=tenant_x' }, {}], async (c, b) => {
  await rounds([[c, 'SHOW search_path', 'tenant_x', 'C'], [b, 'SHOW search_path', DEFAULT_PATH, 'B']]);
}));

check('after-close', () => withClients([{}], async (b) => {
  await withClients([{}], async (a) => {
    await a.query('SET search_path TO some_schema');
    await a.query("SELECT set_config('work_mem', $1, false)", ['78kB']);
  });
  await withClients([{}], (d) => rounds([
    [b, 'SHOW search_path', DEFAULT_PATH, 'B'], [d, 'SHOW search_path', DEFAULT_PATH, 'new D'],
    [b, 'SHOW work_mem', '4MB', 'B'], [d, 'SHOW work_mem', '4MB', 'new D']]));
}));

const timeout = (ms) => new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms).unref());

(async () => {
  let failures = 0;
  const c = await connect();
  c.on('error', () => {}); // reported through the failing query instead
  await c.query('DROP TABLE IF EXISTS node_items; CREATE TABLE node_items (id int, note text)');
  for (const [name, fn] of checks) {
    try {
      await Promise.race([fn(c), timeout(60000)]);
      console.log(`PASS ${name}`);
    } catch (e) {
      failures++;
      console.log(`FAIL ${name}: ${String(e.message || e).replace(/\s+/g, ' ')}`);
    }
  }
  await c.end();
  process.exit(failures ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
