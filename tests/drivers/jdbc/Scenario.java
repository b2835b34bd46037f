// pgjdbc through pgcat. Usage: java -cp classes:postgresql.jar Scenario URL MODE
//
// URL is postgresql://user:password@host:port/db. Prints `PASS <check>` or
// `FAIL <check>: <reason>` per check; exits 1 if any failed. prepareThreshold=1
// makes every PreparedStatement a named server-side statement from its first use.

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.net.URI;
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;
import org.postgresql.PGConnection;
import org.postgresql.PGStatement;

public class Scenario {
    interface Check { void run(Connection c) throws Exception; }

    static final String DEFAULT_PATH = "\"$user\", public";
    static String jdbcUrl, user, password, mode;
    static final Map<String, Check> checks = new LinkedHashMap<>();

    static Connection connect(String options) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("prepareThreshold", "1");
        p.setProperty("connectTimeout", "10");
        p.setProperty("socketTimeout", "60");
        if (options != null) p.setProperty("options", options);
        return DriverManager.getConnection(jdbcUrl, p);
    }

    static Connection connect() throws SQLException { return connect(null); }

    static Object one(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                return rs.getObject(1);
            }
        }
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement()) { st.execute(sql); }
    }

    static void expect(Object got, Object want, String what) {
        if (!Objects.deepEquals(got, want))
            throw new AssertionError(what + ": expected " + want + ", got " + got);
    }

    static void expectError(String sqlState, String what, Check body, Connection c) throws Exception {
        try {
            body.run(c);
        } catch (SQLException e) {
            expect(e.getSQLState(), sqlState, what + " SQLSTATE (" + e.getMessage() + ")");
            return;
        }
        throw new AssertionError(what + " did not raise");
    }

    /** Runs each {conn, sql, want, who} twice in a row per round, one transaction
     *  each (the last with autocommit off): with a FIFO pool of 2, two checkouts
     *  in a row reach both servers. Throws with every distinct mismatch seen. */
    static void rounds(Object[][] list) throws SQLException {
        Set<String> bad = new LinkedHashSet<>();
        for (int i = 0; i < 3; i++) {
            for (Object[] e : list) {
                Connection c = (Connection) e[0];
                String sql = (String) e[1];
                for (int j = 0; j < 2; j++) {
                    c.setAutoCommit(i < 2);
                    Object got = one(c, sql);
                    if (i == 2) c.commit();
                    c.setAutoCommit(true);
                    String[] words = sql.split(" ");
                    if (!e[2].equals(got))
                        bad.add(e[3] + " saw " + words[words.length - 1] + "=" + got + " (want " + e[2] + ")");
                }
            }
        }
        if (!bad.isEmpty()) throw new AssertionError(String.join("; ", bad));
    }

    static void define() {
        checks.put("basic", c -> {
            expect(one(c, "SELECT 1"), 1, "SELECT 1");
            List<String> rows = new ArrayList<>();
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("SELECT g, 'row ' || g FROM generate_series(1, 3) g")) {
                while (rs.next()) rows.add(rs.getInt(1) + ":" + rs.getString(2));
            }
            expect(rows, List.of("1:row 1", "2:row 2", "3:row 3"), "generate_series");
            expect(one(c, "SELECT current_user"), "app", "current_user");
            expect(one(c, "SELECT current_database()"), "app", "current_database");
        });

        checks.put("params", c -> {
            Object[][] cases = {
                {"int4", 42}, {"int8", 1L << 40}, {"text", "héllo ☃"}, {"float8", 1.5},
                {"numeric", new BigDecimal("12.345")}, {"bool", true}, {"text", null},
                {"bytea", new byte[] {0, 1, (byte) 255}}, {"date", java.sql.Date.valueOf("2024-02-29")},
            };
            for (Object[] t : cases) expect(one(c, "SELECT ?::" + t[0], t[1]), t[1], "round trip of " + t[0]);
            Array arr = c.createArrayOf("int4", new Integer[] {1, 2, 3});
            expect(((Array) one(c, "SELECT ?::int4[]", arr)).getArray(), new Integer[] {1, 2, 3}, "int4[]");
            expect(one(c, "SELECT ?::jsonb ->> 'k'", "{\"k\": \"v\"}"), "v", "jsonb");
            expect(one(c, "SELECT ?::int + ?::int", 2, 3), 5, "two params");
        });

        checks.put("transactions", c -> {
            c.setAutoCommit(false);
            exec(c, "INSERT INTO jdbc_items VALUES (1, 'committed')");
            c.commit();
            exec(c, "INSERT INTO jdbc_items VALUES (2, 'rolled back')");
            c.rollback();
            c.setAutoCommit(true);
            expect(one(c, "SELECT string_agg(id::text, ',') FROM jdbc_items"), "1", "rows after commit+rollback");
        });

        checks.put("error-recovery", c -> {
            c.setAutoCommit(false);
            exec(c, "INSERT INTO jdbc_items VALUES (3, 'lost')");
            expectError("22012", "division by zero", x -> one(x, "SELECT 1/?::int", 0), c);
            expectError("25P02", "statement in an aborted transaction", x -> one(x, "SELECT 1"), c);
            c.rollback();
            c.setAutoCommit(true);
            expect(one(c, "SELECT count(*) FROM jdbc_items WHERE id = 3"), 0L, "rows from the failed transaction");
            expectError("42P01", "missing table", x -> one(x, "SELECT * FROM no_such_table WHERE id = ?", 1), c);
            expect(one(c, "SELECT ?::int", 7), 7, "query after errors");
        });

        checks.put("prepared", c -> {
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int * 2, 'prep'")) {
                for (int i = 0; i < 50; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        expect(rs.getInt(1), i * 2, "prepared run " + i);
                    }
                }
                expect(ps.unwrap(PGStatement.class).isUseServerPrepare(), true, "server-side prepared");
            }
        });

        checks.put("batch", c -> {
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO jdbc_items VALUES (?, ?)")) {
                for (int i = 0; i < 100; i++) {
                    ps.setInt(1, 100 + i);
                    ps.setString(2, "batched");
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                expect(counts.length, 100, "batch results");
            }
            expect(one(c, "SELECT count(*) FROM jdbc_items WHERE note = 'batched'"), 100L, "rows from the batch");
        });

        checks.put("copy", c -> {
            var copy = c.unwrap(PGConnection.class).getCopyAPI();
            StringBuilder in = new StringBuilder();
            for (int i = 0; i < 1000; i++) in.append(1000 + i).append("\tcopy ").append(i).append('\n');
            long n = copy.copyIn("COPY jdbc_items (id, note) FROM STDIN", new StringReader(in.toString()));
            expect(n, 1000L, "COPY FROM count");
            expect(one(c, "SELECT count(*) FROM jdbc_items WHERE note LIKE 'copy %'"), 1000L, "rows after COPY FROM");
            StringWriter out = new StringWriter();
            copy.copyOut("COPY (SELECT id, note FROM jdbc_items WHERE note LIKE 'copy %' ORDER BY id) TO STDOUT", out);
            String[] lines = out.toString().split("\n");
            expect(lines.length, 1000, "rows from COPY TO");
            expect(lines[0], "1000\tcopy 0", "first COPY TO row");
        });

        checks.put("concurrency", c -> {
            ExecutorService pool = Executors.newFixedThreadPool(4);
            List<Future<?>> futures = new ArrayList<>();
            for (int n = 0; n < 4; n++) {
                final int w = n;
                futures.add(pool.submit(() -> {
                    try (Connection x = connect()) {
                        for (int i = 0; i < 100; i++) {
                            if (i % 10 == 0) { // a transaction stays on one server
                                x.setAutoCommit(false);
                                Set<Object> pids = new HashSet<>();
                                for (int k = 0; k < 3; k++) pids.add(one(x, "SELECT pg_backend_pid()"));
                                x.commit();
                                x.setAutoCommit(true);
                                expect(pids.size(), 1, "worker " + w + ": backends within one transaction");
                            }
                            expect(one(x, "SELECT ?::int + ?::int", w, i), w + i, "worker " + w + " query " + i);
                        }
                    }
                    return null;
                }));
            }
            pool.shutdown();
            List<String> errors = new ArrayList<>();
            for (Future<?> f : futures) {
                try { f.get(60, TimeUnit.SECONDS); } catch (ExecutionException e) { errors.add(e.getCause().toString()); }
            }
            if (!errors.isEmpty()) throw new AssertionError(String.join("; ", errors));
        });

        if (mode.equals("session")) checks.put("session-state", c -> {
            Object pid = one(c, "SELECT pg_backend_pid()");
            exec(c, "CREATE TEMP TABLE jdbc_tmp AS SELECT 1 AS x");
            for (int i = 0; i < 3; i++) {
                expect(one(c, "SELECT pg_backend_pid()"), pid, "backend across transactions");
                expect(one(c, "SELECT x FROM jdbc_tmp"), 1, "temp table across transactions");
            }
        });

        checks.put("isolation", c -> {
            try (Connection a = connect(); Connection b = connect()) {
                exec(a, "SET search_path TO some_schema");
                exec(a, "SET statement_timeout = '1234ms'");
                rounds(new Object[][] {
                    {b, "SHOW search_path", DEFAULT_PATH, "B"}, {b, "SHOW statement_timeout", "0", "B"},
                    {a, "SHOW search_path", "some_schema", "A"}, {a, "SHOW statement_timeout", "1234ms", "A"}});
            }
        });

        checks.put("isolation-set-config", c -> {
            try (Connection a = connect(); Connection b = connect()) {
                expect(one(a, "SELECT set_config('work_mem', ?, false)", "78kB"), "78kB", "set_config");
                rounds(new Object[][] {{b, "SHOW work_mem", "4MB", "B"}, {a, "SHOW work_mem", "78kB", "A"}});
            }
        });

        checks.put("startup-options", c -> {
            try (Connection x = connect("-c search_path=tenant_x"); Connection b = connect()) {
                rounds(new Object[][] {
                    {x, "SHOW search_path", "tenant_x", "C"}, {b, "SHOW search_path", DEFAULT_PATH, "B"}});
            }
        });

        checks.put("after-close", c -> {
            try (Connection b = connect()) {
                try (Connection a = connect()) {
                    exec(a, "SET search_path TO some_schema");
                    one(a, "SELECT set_config('work_mem', ?, false)", "78kB");
                }
                try (Connection d = connect()) {
                    rounds(new Object[][] {
                        {b, "SHOW search_path", DEFAULT_PATH, "B"}, {d, "SHOW search_path", DEFAULT_PATH, "new D"},
                        {b, "SHOW work_mem", "4MB", "B"}, {d, "SHOW work_mem", "4MB", "new D"}});
                }
            }
        });
    }

    public static void main(String[] args) throws Exception {
        URI uri = new URI(args[0]);
        String[] userInfo = uri.getUserInfo().split(":", 2);
        user = userInfo[0];
        password = userInfo[1];
        jdbcUrl = "jdbc:postgresql://" + uri.getHost() + ":" + uri.getPort() + uri.getPath();
        mode = args[1];
        define();
        int failures = 0;
        try (Connection c = connect()) {
            exec(c, "DROP TABLE IF EXISTS jdbc_items");
            exec(c, "CREATE TABLE jdbc_items (id int, note text)");
            for (var e : checks.entrySet()) {
                try {
                    e.getValue().run(c);
                    System.out.println("PASS " + e.getKey());
                } catch (Throwable t) {
                    failures++;
                    String msg = t instanceof AssertionError ? t.getMessage() : t.toString();
                    System.out.println("FAIL " + e.getKey() + ": " + String.valueOf(msg).replaceAll("\\s+", " "));
                    if (!c.getAutoCommit()) { c.rollback(); c.setAutoCommit(true); }
                }
                System.out.flush();
            }
        }
        System.exit(failures > 0 ? 1 : 0);
    }
}
