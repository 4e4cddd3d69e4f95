// JDBC scenarios run by tests/test_clients_other.py against the policyc proxy, with the
// PostgreSQL JDBC driver (pgjdbc) as shipped by the distribution. Java 11+ runs this single
// source file directly:
//
//   java -cp /usr/share/java/postgresql.jar Scenario.java URL USER PASSWORD NAME[,NAME...]
//
// Several scenarios run in one JVM (start-up costs about a second); each gets its own
// connection and prints one JSON line: {"scenario": NAME, "steps": [STEP, ...]} where a STEP
// is {"ok": true, ...} or {"ok": false, "code": SQLSTATE, "message": ...}.

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

import org.postgresql.PGStatement;

public class Scenario {
    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: Scenario.java URL USER PASSWORD NAME[,NAME...]");
            System.exit(64);
        }
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        for (String name : args[3].split(",")) {
            List<String> steps = new ArrayList<>();
            try (Connection conn = DriverManager.getConnection(args[0], props)) {
                run(name, conn, steps);
            } catch (SQLException e) {
                steps.add(error(e));
            }
            System.out.println("{\"scenario\": " + str(name) + ", \"steps\": ["
                    + String.join(", ", steps) + "]}");
        }
    }

    static void run(String name, Connection conn, List<String> steps) throws SQLException {
        switch (name) {
            case "metadata": metadata(conn, steps); break;
            case "batch": batch(conn, steps); break;
            case "tx_error": txError(conn, steps); break;
            case "prepared": prepared(conn, steps); break;
            case "blocked": blocked(conn, steps); break;
            default: throw new IllegalArgumentException("no scenario " + name);
        }
    }

    /** DatabaseMetaData as IDEs and ORMs read it: the group schema's relations and columns. */
    static void metadata(Connection conn, List<String> steps) {
        DatabaseMetaData md;
        try {
            md = conn.getMetaData();
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, conn.getSchema(), "%",
                    new String[] {"TABLE", "VIEW"})) {
                while (rs.next()) {
                    tables.add(pair(rs.getString("TABLE_NAME"), rs.getString("TABLE_TYPE")));
                }
            }
            steps.add(ok("\"schema\": " + str(conn.getSchema()) + ", \"tables\": ["
                    + String.join(", ", tables) + "]"));
        } catch (SQLException e) {
            steps.add(error(e));
            return;
        }
        try {
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "billing", "patients", "%")) {
                while (rs.next()) {
                    columns.add(pair(rs.getString("COLUMN_NAME"), rs.getString("TYPE_NAME")));
                }
            }
            steps.add(ok("\"columns\": [" + String.join(", ", columns) + "]"));
        } catch (SQLException e) {
            steps.add(error(e));
        }
    }

    /** addBatch/executeBatch into billing's claims in one transaction, then read it back. */
    static void batch(Connection conn, List<String> steps) throws SQLException {
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement(
                "INSERT INTO claims (patient_id, visit_id, amount, code) VALUES (?, ?, ?, ?)")) {
            int[] patients = {1, 4, 7};
            for (int patient : patients) {
                ps.setInt(1, patient);
                ps.setNull(2, java.sql.Types.BIGINT);
                ps.setBigDecimal(3, new java.math.BigDecimal("12.50"));
                ps.setString(4, "JDBC-BATCH");
                ps.addBatch();
            }
            int[] counts = ps.executeBatch();
            conn.commit();
            List<String> shown = new ArrayList<>();
            for (int count : counts) {
                shown.add(Integer.toString(count));
            }
            steps.add(ok("\"counts\": [" + String.join(", ", shown) + "]"));
        } catch (SQLException e) {
            steps.add(error(e));
            conn.rollback();
        }
        query(conn, "SELECT patient_id FROM claims WHERE code = 'JDBC-BATCH' ORDER BY 1", steps);
        conn.commit();
    }

    /** Autocommit off: an error reaches the client as itself, rollback, the session goes on. */
    static void txError(Connection conn, List<String> steps) throws SQLException {
        conn.setAutoCommit(false);
        query(conn, "SELECT count(*) FROM patients", steps);
        query(conn, "SELECT nosuchcol FROM patients", steps);
        conn.rollback();
        query(conn, "SELECT 'usable'", steps);
        conn.commit();
    }

    /** One PreparedStatement run past prepareThreshold (5): it becomes a named server one. */
    static void prepared(Connection conn, List<String> steps) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(
                "SELECT id, clinic_id FROM patients WHERE id = ?")) {
            for (int id : new int[] {1, 4, 7, 10, 13, 16, 19}) {
                ps.setInt(1, id);
                try (ResultSet rs = ps.executeQuery()) {
                    steps.add(ok("\"rows\": " + rows(rs) + ", \"server_prepared\": "
                            + ps.unwrap(PGStatement.class).isUseServerPrepare()));
                } catch (SQLException e) {
                    steps.add(error(e));
                }
            }
        }
    }

    /** A statement the proxy refuses fails with 42501; the connection stays usable. */
    static void blocked(Connection conn, List<String> steps) {
        query(conn, "SET ROLE postgres", steps);
        query(conn, "SELECT current_user", steps);
    }

    static void query(Connection conn, String sql, List<String> steps) {
        try (Statement st = conn.createStatement()) {
            if (st.execute(sql)) {
                try (ResultSet rs = st.getResultSet()) {
                    steps.add(ok("\"rows\": " + rows(rs)));
                }
            } else {
                steps.add(ok("\"count\": " + st.getUpdateCount()));
            }
        } catch (SQLException e) {
            steps.add(error(e));
        }
    }

    static String rows(ResultSet rs) throws SQLException {
        List<String> out = new ArrayList<>();
        int width = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            List<String> row = new ArrayList<>();
            for (int i = 1; i <= width; i++) {
                row.add(str(rs.getString(i)));
            }
            out.add("[" + String.join(", ", row) + "]");
        }
        return "[" + String.join(", ", out) + "]";
    }

    static String ok(String fields) {
        return "{\"ok\": true, " + fields + "}";
    }

    static String error(SQLException e) {
        return "{\"ok\": false, \"code\": " + str(e.getSQLState()) + ", \"message\": "
                + str(e.getMessage()) + "}";
    }

    static String pair(String a, String b) {
        return "[" + str(a) + ", " + str(b) + "]";
    }

    static String str(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
