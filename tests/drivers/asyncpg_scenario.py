"""asyncpg through pgcat. Usage: asyncpg_scenario.py URL MODE

Prints `PASS <check>` or `FAIL <check>: <reason>` per check; exits 1 if any failed.
asyncpg runs every query with arguments (and fetch*/prepare) as a named
prepared statement from its statement cache, so this exercises those too.
"""
import asyncio
import datetime
import decimal
import sys

import asyncpg

URL, MODE = sys.argv[1], sys.argv[2]
DEFAULT_PATH = '"$user", public'
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def expect(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


def connect(**kw):
    return asyncpg.connect(URL, timeout=10, **kw)


async def rounds(checks, n=3):
    """Runs each (conn, sql, want, who) twice in a row per round, one transaction
    each (the last inside BEGIN/COMMIT): with a FIFO pool of 2, two checkouts in
    a row reach both servers. Raises with every distinct mismatch seen."""
    bad = []
    for i in range(n):
        for conn, sql, want, who in checks:
            for _ in range(2):
                if i == n - 1:
                    async with conn.transaction():
                        got = await conn.fetchval(sql)
                else:
                    got = await conn.fetchval(sql)
                msg = f"{who} saw {sql.split()[-1]}={got} (want {want})"
                if got != want and msg not in bad:
                    bad.append(msg)
    if bad:
        raise AssertionError("; ".join(bad))


@check
async def basic(conn):
    expect(await conn.fetchval("SELECT 1"), 1, "SELECT 1")
    rows = await conn.fetch("SELECT g, 'row ' || g AS t FROM generate_series(1, 3) g")
    expect([tuple(r) for r in rows], [(1, "row 1"), (2, "row 2"), (3, "row 3")], "generate_series")
    expect(await conn.fetchval("SELECT current_user"), "app", "current_user")
    expect(await conn.fetchval("SELECT current_database()"), "app", "current_database")


@check
async def params(conn):
    values = [("int4", 42), ("int8", 2**40), ("text", "héllo ☃"), ("float8", 1.5),
              ("numeric", decimal.Decimal("12.345")), ("bool", True), ("text", None),
              ("bytea", b"\x00\x01\xff"), ("date", datetime.date(2024, 2, 29)),
              ("int4[]", [1, 2, 3]), ("jsonb", '{"k": "v"}')]
    for typ, v in values:
        expect(await conn.fetchval(f"SELECT $1::{typ}", v), v, f"round trip of {typ}")
    expect(await conn.fetchval("SELECT $1::int + $2::int", 2, 3), 5, "two params")


@check
async def transactions(conn):
    async with conn.transaction():
        await conn.execute("INSERT INTO asyncpg_items VALUES (1, 'committed')")
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO asyncpg_items VALUES (2, 'rolled back')")
            raise LookupError("roll back")
    except LookupError:
        pass
    rows = await conn.fetch("SELECT id FROM asyncpg_items ORDER BY id")
    expect([r[0] for r in rows], [1], "rows after commit+rollback")


@check
async def error_recovery(conn):
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO asyncpg_items VALUES (3, 'lost')")
            try:
                await conn.fetchval("SELECT 1/$1::int", 0)
                raise AssertionError("division by zero did not raise")
            except asyncpg.exceptions.DivisionByZeroError:
                pass
            await conn.fetchval("SELECT 1")
        raise AssertionError("statement in an aborted transaction did not raise")
    except asyncpg.exceptions.InFailedSQLTransactionError:
        pass  # and leaving the block rolled back
    expect(await conn.fetchval("SELECT count(*) FROM asyncpg_items WHERE id = 3"), 0, "rows from the failed transaction")
    try:
        await conn.fetch("SELECT * FROM no_such_table WHERE id = $1", 1)
        raise AssertionError("missing table did not raise")
    except asyncpg.exceptions.UndefinedTableError:
        pass
    expect(await conn.fetchval("SELECT $1::int", 7), 7, "query after errors")


@check
async def prepared(conn):
    stmt = await conn.prepare("SELECT $1::int * 2, 'prep'")
    for i in range(50):
        expect(await stmt.fetchval(i), i * 2, f"prepared run {i}")


@check
async def batch(conn):
    await conn.executemany("INSERT INTO asyncpg_items VALUES ($1, $2)", [(100 + i, "batched") for i in range(100)])
    expect(await conn.fetchval("SELECT count(*) FROM asyncpg_items WHERE note = 'batched'"), 100, "rows from executemany")


@check
async def copy(conn):
    await conn.copy_records_to_table("asyncpg_items", records=[(1000 + i, f"copy {i}") for i in range(1000)],
                                     columns=["id", "note"])
    expect(await conn.fetchval("SELECT count(*) FROM asyncpg_items WHERE note LIKE 'copy %'"), 1000, "rows after COPY FROM")
    chunks = []

    async def sink(data):
        chunks.append(data)

    await conn.copy_from_query("SELECT id, note FROM asyncpg_items WHERE note LIKE 'copy %' ORDER BY id", output=sink)
    lines = b"".join(chunks).decode().splitlines()
    expect(len(lines), 1000, "rows from COPY TO")
    expect(lines[0], "1000\tcopy 0", "first COPY TO row")


@check
async def concurrency(conn):
    async def worker(n):
        c = await connect()
        try:
            for i in range(100):
                if i % 10 == 0:  # a transaction stays on one server
                    async with c.transaction():
                        pids = {await c.fetchval("SELECT pg_backend_pid()") for _ in range(3)}
                    expect(len(pids), 1, f"worker {n}: backends within one transaction")
                expect(await c.fetchval("SELECT $1::int + $2::int", n, i), n + i, f"worker {n} query {i}")
        finally:
            await c.close()

    results = await asyncio.gather(*(worker(n) for n in range(4)), return_exceptions=True)
    errors = [str(r) for r in results if isinstance(r, BaseException)]
    if errors:
        raise AssertionError("; ".join(errors))


@check
async def session_state(conn):
    if MODE != "session":
        return "skip"
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    await conn.execute("CREATE TEMP TABLE asyncpg_tmp AS SELECT 1 AS x")
    for _ in range(3):
        expect(await conn.fetchval("SELECT pg_backend_pid()"), pid, "backend across transactions")
        expect(await conn.fetchval("SELECT x FROM asyncpg_tmp"), 1, "temp table across transactions")


@check
async def isolation(conn):
    a, b = await connect(), await connect()
    try:
        await a.execute("SET search_path TO some_schema")  # no args: simple protocol
        await a.fetch("SET statement_timeout = '1234ms'")  # extended protocol
        await rounds([(b, "SHOW search_path", DEFAULT_PATH, "B"), (b, "SHOW statement_timeout", "0", "B"),
                      (a, "SHOW search_path", "some_schema", "A"), (a, "SHOW statement_timeout", "1234ms", "A")])
    finally:
        await a.close()
        await b.close()


@check
async def isolation_set_config(conn):
    a, b = await connect(), await connect()
    try:
        expect(await a.fetchval("SELECT set_config('work_mem', $1, false)", "78kB"), "78kB", "set_config")
        await rounds([(b, "SHOW work_mem", "4MB", "B"), (a, "SHOW work_mem", "78kB", "A")])
    finally:
        await a.close()
        await b.close()


@check
async def startup_options(conn):
    c, b = await connect(server_settings={"search_path": "tenant_x"}), await connect()
    try:
        await rounds([(c, "SHOW search_path", "tenant_x", "C"), (b, "SHOW search_path", DEFAULT_PATH, "B")])
    finally:
        await c.close()
        await b.close()


@check
async def after_close(conn):
    b, a = await connect(), await connect()
    try:
        await a.execute("SET search_path TO some_schema")
        await a.fetchval("SELECT set_config('work_mem', $1, false)", "78kB")
        await a.close()
        d = await connect()
        await rounds([(b, "SHOW search_path", DEFAULT_PATH, "B"), (d, "SHOW search_path", DEFAULT_PATH, "new D"),
                      (b, "SHOW work_mem", "4MB", "B"), (d, "SHOW work_mem", "4MB", "new D")])
        await d.close()
    finally:
        await b.close()


async def main():
    failures = 0
    conn = await connect()
    await conn.execute("DROP TABLE IF EXISTS asyncpg_items")
    await conn.execute("CREATE TABLE asyncpg_items (id int, note text)")
    for fn in CHECKS:
        name = fn.__name__.replace("_", "-")
        try:
            if await asyncio.wait_for(fn(conn), 60) == "skip":
                continue
            print(f"PASS {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - any failure is reported, then we go on
            failures += 1
            reason = " ".join(str(e).split()) or type(e).__name__
            print(f"FAIL {name}: {reason}", flush=True)
    await conn.close()
    return failures


sys.exit(1 if asyncio.run(main()) else 0)
