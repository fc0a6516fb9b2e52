// The PostgreSQL JDBC driver against auditlake, as DBeaver and most BI tools
// use it: DatabaseMetaData first, then a prepared statement.
// Usage: java -cp .:postgresql.jar JdbcClient URL USER PASSWORD ACTOR
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;

public class JdbcClient {
    public static void main(String[] args) throws Exception {
        try (Connection connection = DriverManager.getConnection(args[0], args[1], args[2])) {
            DatabaseMetaData meta = connection.getMetaData();
            System.out.println("jdbc product " + meta.getDatabaseProductName());
            try (ResultSet tables = meta.getTables(null, null, "%", new String[] {"TABLE"})) {
                while (tables.next()) {
                    System.out.println("jdbc table " + tables.getString("TABLE_SCHEM") + "." + tables.getString("TABLE_NAME"));
                }
            }
            try (ResultSet columns = meta.getColumns(null, "public", "audit_events", "%")) {
                while (columns.next()) {
                    String name = columns.getString("COLUMN_NAME");
                    if (name.equals("time") || name.equals("actor_id") || name.equals("seq")) {
                        System.out.println("jdbc column " + name + " " + columns.getString("TYPE_NAME") + " "
                                + columns.getInt("DATA_TYPE") + " nullable=" + columns.getString("IS_NULLABLE"));
                    }
                }
            }
            String byAction = "select action, count(*) as n, max(time) as last from audit_events "
                    + "where actor_id = ? group by action order by action";
            try (PreparedStatement statement = connection.prepareStatement(byAction)) {
                statement.setString(1, args[3]);
                try (ResultSet rows = statement.executeQuery()) {
                    while (rows.next()) {
                        System.out.println("jdbc " + rows.getString(1) + " " + rows.getLong(2) + " "
                                + rows.getTimestamp(3).toInstant());
                    }
                }
            }
        }
    }
}
