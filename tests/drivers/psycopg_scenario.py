"""psycopg 3 through pgcat. Usage: psycopg_scenario.py URL MODE

Prints `PASS <check>` or `FAIL <check>: <reason>` per check; exits 1 if any failed.
"""
import datetime
import decimal
import sys
import threading

import psycopg

URL, MODE = sys.argv[1], sys.argv[2]
DEFAULT_PATH = '"$user", public'
failures = 0


def connect(**kw):
    # autocommit: no implicit transaction holds a pooled server between statements
    return psycopg.connect(URL, autocommit=True, connect_timeout=10, **kw)


def one(conn, sql, params=None, **kw):
    return conn.execute(sql, params, **kw).fetchone()[0]


def check(fn):
    global failures
    name = fn.__name__.replace("check_", "").replace("_", "-")
    try:
        fn()
        print(f"PASS {name}", flush=True)
    except Exception as e:  # noqa: BLE001 - any failure is reported, then we go on
        failures += 1
        reason = " ".join(str(e).split()) or type(e).__name__
        print(f"FAIL {name}: {reason}", flush=True)


def expect(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


def rounds(checks, n=3):
    """Runs each (conn, sql, want, who) twice in a row per round, one transaction
    each (the last inside BEGIN/COMMIT): with a FIFO pool of 2, two checkouts in
    a row reach both servers. Raises with every distinct mismatch seen."""
    bad = []
    for i in range(n):
        for conn, sql, want, who in checks:
            for _ in range(2):
                if i == n - 1:
                    with conn.transaction():
                        got = one(conn, sql)
                else:
                    got = one(conn, sql)
                msg = f"{who} saw {sql.split()[-1]}={got} (want {want})"
                if got != want and msg not in bad:
                    bad.append(msg)
    if bad:
        raise AssertionError("; ".join(bad))


conn = connect()


@check
def check_basic():
    expect(one(conn, "SELECT 1"), 1, "SELECT 1")
    rows = conn.execute("SELECT g, 'row ' || g FROM generate_series(1, 3) g").fetchall()
    expect(rows, [(1, "row 1"), (2, "row 2"), (3, "row 3")], "generate_series")
    expect(one(conn, "SELECT current_user"), "app", "current_user")
    expect(one(conn, "SELECT current_database()"), "app", "current_database")


@check
def check_params():
    values = [42, 2**40, "héllo ☃", 1.5, decimal.Decimal("12.345"), True, None,
              b"\x00\x01\xff", datetime.date(2024, 2, 29), [1, 2, 3]]
    for v in values:
        expect(one(conn, "SELECT %s", (v,)), v, f"round trip of {type(v).__name__}")
    expect(one(conn, "SELECT %s::jsonb ->> 'k'", ('{"k": "v"}',)), "v", "jsonb")
    expect(one(conn, "SELECT %s::int + %s::int", (2, 3)), 5, "two params")


conn.execute("DROP TABLE IF EXISTS psycopg_items")
conn.execute("CREATE TABLE psycopg_items (id int, note text)")


@check
def check_transactions():
    with conn.transaction():
        conn.execute("INSERT INTO psycopg_items VALUES (1, 'committed')")
    with conn.transaction():
        conn.execute("INSERT INTO psycopg_items VALUES (2, 'rolled back')")
        raise psycopg.Rollback()  # leaves the block, rolling back
    expect(conn.execute("SELECT id FROM psycopg_items ORDER BY id").fetchall(), [(1,)], "rows after commit+rollback")


@check
def check_error_recovery():
    try:
        with conn.transaction():
            conn.execute("INSERT INTO psycopg_items VALUES (3, 'lost')")
            try:
                conn.execute("SELECT 1/%s::int", (0,))
                raise AssertionError("division by zero did not raise")
            except psycopg.errors.DivisionByZero:
                pass
            conn.execute("SELECT 1")
        raise AssertionError("statement in an aborted transaction did not raise")
    except psycopg.errors.InFailedSqlTransaction:
        pass  # and leaving the block rolled back
    expect(one(conn, "SELECT count(*) FROM psycopg_items WHERE id = 3"), 0, "rows from the failed transaction")
    # an error outside a transaction, on the extended protocol, then go on
    try:
        conn.execute("SELECT * FROM no_such_table WHERE id = %s", (1,))
        raise AssertionError("missing table did not raise")
    except psycopg.errors.UndefinedTable:
        pass
    expect(one(conn, "SELECT %s::int", (7,)), 7, "query after errors")


@check
def check_prepared():
    for i in range(50):
        expect(one(conn, "SELECT %s::int * 2, 'prep'", (i,), prepare=True), i * 2, f"prepared run {i}")


@check
def check_pipeline():
    with conn.pipeline():
        cur = conn.cursor()
        for i in range(100):
            cur.execute("INSERT INTO psycopg_items VALUES (%s, 'pipelined')", (100 + i,))
        cur.execute("SELECT count(*) FROM psycopg_items WHERE note = 'pipelined'")
    expect(cur.fetchone()[0], 100, "rows inserted by the pipeline")


@check
def check_copy():
    with conn.cursor() as cur:
        with cur.copy("COPY psycopg_items (id, note) FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((1000 + i, f"copy {i}"))
        expect(one(conn, "SELECT count(*) FROM psycopg_items WHERE note LIKE 'copy %'"), 1000, "rows after COPY FROM")
        with cur.copy("COPY (SELECT id, note FROM psycopg_items WHERE note LIKE 'copy %' ORDER BY id) TO STDOUT") as copy:
            rows = list(copy.rows())
    expect(len(rows), 1000, "rows from COPY TO")
    expect(rows[0], ("1000", "copy 0"), "first COPY TO row")


@check
def check_concurrency():
    errors = []

    def worker(n):
        try:
            with connect() as c:
                for i in range(100):
                    if i % 10 == 0:  # a transaction stays on one server
                        with c.transaction():
                            pids = {one(c, "SELECT pg_backend_pid()") for _ in range(3)}
                        expect(len(pids), 1, "backends within one transaction")
                    expect(one(c, "SELECT %s::int + %s::int", (n, i)), n + i, f"worker {n} query {i}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"worker {n}: {e}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError("; ".join(errors))


if MODE == "session":
    @check
    def check_session_state():
        pid = one(conn, "SELECT pg_backend_pid()")
        conn.execute("CREATE TEMP TABLE psycopg_tmp AS SELECT 1 AS x")
        for _ in range(3):
            expect(one(conn, "SELECT pg_backend_pid()"), pid, "backend across transactions")
            expect(one(conn, "SELECT x FROM psycopg_tmp"), 1, "temp table across transactions")


@check
def check_isolation():
    with connect() as a, connect() as b:
        a.execute("SET search_path TO some_schema")  # no params: simple protocol
        a.execute("SET statement_timeout = '1234ms'", prepare=True)  # extended, named
        rounds([(b, "SHOW search_path", DEFAULT_PATH, "B"), (b, "SHOW statement_timeout", "0", "B"),
                (a, "SHOW search_path", "some_schema", "A"), (a, "SHOW statement_timeout", "1234ms", "A")])


@check
def check_isolation_set_config():
    with connect() as a, connect() as b:
        expect(one(a, "SELECT set_config('work_mem', %s, false)", ("78kB",)), "78kB", "set_config")
        rounds([(b, "SHOW work_mem", "4MB", "B"), (a, "SHOW work_mem", "78kB", "A")])


@check
def check_startup_options():
    with connect(options="-c search_path=tenant_x") as c, connect() as b:
        rounds([(c, "SHOW search_path", "tenant_x", "C"), (b, "SHOW search_path", DEFAULT_PATH, "B")])


@check
def check_after_close():
    with connect() as b:
        with connect() as a:
            a.execute("SET search_path TO some_schema")
            a.execute("SELECT set_config('work_mem', %s, false)", ("78kB",))
        with connect() as d:
            rounds([(b, "SHOW search_path", DEFAULT_PATH, "B"), (d, "SHOW search_path", DEFAULT_PATH, "new D"),
                    (b, "SHOW work_mem", "4MB", "B"), (d, "SHOW work_mem", "4MB", "new D")])


conn.close()
sys.exit(1 if failures else 0)
