// Runs one scenario with node-postgres against a DSN and prints a JSON object on stdout:
// {"steps": [{"ok": true, "rows": [...]} | {"ok": false, "code": SQLSTATE, "message": ...}]}.
// Usage: node scenario.js "postgresql://user:token@127.0.0.1:PORT/db?sslmode=disable" NAME
"use strict";
const { Client } = require("pg");

async function step(client, query, values) {
  try {
    const res = await client.query(query, values);
    if (Array.isArray(res)) {  // several statements in one simple Query
      return { ok: true, results: res.map((r) => ({ command: r.command, rows: r.rows })) };
    }
    return { ok: true, command: res.command, rows: res.rows };
  } catch (err) {
    return { ok: false, code: err.code, message: err.message };
  }
}

const scenarios = {
  // simple query protocol: no parameters, several statements in one string
  async simple(c) {
    return [
      await step(c, "SELECT current_user AS group, count(*)::int AS n FROM patients"),
      await step(c, "SELECT 1 AS a; SELECT 2 AS b"),
    ];
  },
  // extended protocol: unnamed statement with parameters
  async extended(c) {
    return [
      await step(c, "SELECT id, clinic_id, ssn FROM patients WHERE id = $1", [1]),
      await step(c, "SELECT $1::int + $2::int AS sum", [40, 2]),
      await step(c, "SELECT id FROM patients WHERE id = $1", [2]),  // clinic 2's patient
    ];
  },
  // an error after BEGIN reaches the client as the real error, then ROLLBACK and go on
  async tx_error(c) {
    return [
      await step(c, "BEGIN"),
      await step(c, "SELECT nosuchcol FROM patients"),
      await step(c, "ROLLBACK"),
      await step(c, "SELECT 'usable'::text AS after"),
    ];
  },
  // a named prepared statement run twice (parsed once, then Bind/Execute by name)
  async prepared(c) {
    const q = (id) => ({ name: "by_id", text: "SELECT id, clinic_id FROM patients WHERE id = $1",
                         values: [id] });
    return [await step(c, q(1)), await step(c, q(4))];
  },
};

async function main() {
  const [dsn, name] = process.argv.slice(2);
  const scenario = scenarios[name];
  if (!dsn || !scenario) {
    process.stderr.write(`usage: scenario.js DSN {${Object.keys(scenarios).join("|")}}\n`);
    process.exit(64);
  }
  const client = new Client({ connectionString: dsn });
  await client.connect();
  try {
    process.stdout.write(JSON.stringify({ steps: await scenario(client) }) + "\n");
  } finally {
    await client.end();
  }
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ fatal: { code: err.code, message: err.message } }) + "\n");
  process.exit(1);
});
