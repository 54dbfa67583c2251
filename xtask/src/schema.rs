//! `cargo xtask schema [--check]`: generates `crates/skill-fleet-jobs/src/schema.rs` from the
//! SQL files in `migrations/sqlite/` (applied to a temporary database, read back through
//! `sqlite_master`, `pragma_table_info` and `pragma_foreign_key_list`), or checks the
//! checked-in file; and checks that `migrations/postgres/` makes the same tables.
//!
//! The PostgreSQL half applies those migrations to a fresh database on the test kit's
//! PostgreSQL (`skill_fleet_testkit::TestPostgres`), reads the tables back through
//! `information_schema` and renders them the same way: one `schema.rs` serves both backends,
//! so the two renderings must be equal. Without a PostgreSQL it says it skipped that half;
//! under `CI` a missing PostgreSQL is an error.
//!
//! Type mapping: `INTEGER PRIMARY KEY` (the 64-bit rowid) and `BIGINT` → `BigInt`, other
//! `INT` types → `Integer`, `TEXT` → `Text`, `REAL` → `Double`, `TIMESTAMP` → `Timestamp`,
//! `BOOLEAN` → `Bool`, `BLOB` → `Binary`; nullable columns are `Nullable<…>`. PostgreSQL's
//! `bigint`, `integer`, `text`, `double precision`, `timestamp` (without time zone),
//! `boolean` and `bytea` map to the same; any other PostgreSQL type is an error.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use diesel_migrations::{FileBasedMigrations, MigrationHarness};

use crate::{Result, project_root};

/// The generated file, relative to the repository root.
const SCHEMA_PATH: &str = "crates/skill-fleet-jobs/src/schema.rs";

pub fn run(args: &[String]) -> Result<ExitCode> {
    let check = match args {
        [] => false,
        [flag] if flag == "--check" => true,
        _ => {
            eprintln!("usage: cargo xtask schema [--check]");
            return Ok(ExitCode::from(2));
        }
    };
    let generated = generate()?;
    check_postgres(&generated)?;
    let path = project_root().join(SCHEMA_PATH);
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if check {
        if current == generated {
            println!("{SCHEMA_PATH} is up to date");
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("schema.rs is out of date: run `cargo xtask schema` and commit");
        return Ok(ExitCode::FAILURE);
    }
    if current == generated {
        println!("{SCHEMA_PATH} is up to date");
    } else {
        std::fs::write(&path, generated)
            .map_err(|err| format!("cannot write `{}`: {err}", path.display()))?;
        println!("wrote {SCHEMA_PATH}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A temporary database file, removed (with its WAL files) on drop.
struct TempDb(PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(QueryableByName)]
struct TableName {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct ColumnInfo {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    sql_type: String,
    #[diesel(sql_type = Integer)]
    not_null: i32,
    #[diesel(sql_type = Integer)]
    pk: i32,
}

#[derive(QueryableByName)]
struct ForeignKey {
    #[diesel(sql_type = Text)]
    target: String,
    #[diesel(sql_type = Text)]
    column: String,
}

struct Table {
    name: String,
    columns: Vec<ColumnInfo>,
    foreign_keys: Vec<ForeignKey>,
}

/// The diesel SQL type of one column.
fn diesel_type(table: &str, column: &ColumnInfo, single_pk: bool) -> Result<String> {
    let declared = column.sql_type.to_ascii_uppercase();
    let rowid = declared == "INTEGER" && column.pk > 0 && single_pk;
    let base = if rowid || declared.contains("BIGINT") {
        "BigInt"
    } else if declared.contains("INT") {
        "Integer"
    } else if declared.contains("TEXT") || declared.contains("CHAR") || declared.contains("CLOB") {
        "Text"
    } else if declared.contains("REAL") || declared.contains("DOUB") || declared.contains("FLOA") {
        "Double"
    } else if declared.contains("TIMESTAMP") || declared.contains("DATETIME") {
        "Timestamp"
    } else if declared.contains("BOOL") {
        "Bool"
    } else if declared.contains("BLOB") {
        "Binary"
    } else {
        return Err(format!(
            "column `{table}.{}` has type `{}` that the generator does not map",
            column.name, column.sql_type
        )
        .into());
    };
    Ok(if column.not_null == 0 && column.pk == 0 {
        format!("Nullable<{base}>")
    } else {
        base.to_owned()
    })
}

fn read_tables(conn: &mut SqliteConnection) -> Result<Vec<Table>> {
    let names: Vec<TableName> = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name != '__diesel_schema_migrations' ORDER BY name",
    )
    .load(conn)?;
    let mut tables = Vec::new();
    for TableName { name } in names {
        let columns: Vec<ColumnInfo> = diesel::sql_query(
            "SELECT name, type AS sql_type, \"notnull\" AS not_null, pk \
             FROM pragma_table_info(?) ORDER BY cid",
        )
        .bind::<Text, _>(&name)
        .load(conn)?;
        let mut foreign_keys: Vec<ForeignKey> = diesel::sql_query(
            "SELECT \"table\" AS target, \"from\" AS column FROM pragma_foreign_key_list(?)",
        )
        .bind::<Text, _>(&name)
        .load(conn)?;
        foreign_keys.sort_by(|a, b| (&a.target, &a.column).cmp(&(&b.target, &b.column)));
        tables.push(Table {
            name,
            columns,
            foreign_keys,
        });
    }
    Ok(tables)
}

fn render(tables: &[Table]) -> Result<String> {
    let mut out = String::from(
        "//! Diesel table definitions, generated by `cargo xtask schema` from `migrations/sqlite/` \
         (and checked against `migrations/postgres/`, which makes the same tables); do not \
         edit.\n",
    );
    for table in tables {
        let mut pk: Vec<&ColumnInfo> = table.columns.iter().filter(|c| c.pk > 0).collect();
        pk.sort_by_key(|c| c.pk);
        if pk.is_empty() {
            return Err(format!("table `{}` has no primary key", table.name).into());
        }
        let pk_names: Vec<&str> = pk.iter().map(|c| c.name.as_str()).collect();
        writeln!(out, "\ndiesel::table! {{")?;
        writeln!(out, "    {} ({}) {{", table.name, pk_names.join(", "))?;
        for column in &table.columns {
            let ty = diesel_type(&table.name, column, pk.len() == 1)?;
            writeln!(out, "        {} -> {ty},", column.name)?;
        }
        writeln!(out, "    }}\n}}")?;
    }
    let mut joins = Vec::new();
    for table in tables {
        for fk in &table.foreign_keys {
            joins.push(format!(
                "diesel::joinable!({} -> {} ({}));",
                table.name, fk.target, fk.column
            ));
        }
    }
    if !joins.is_empty() {
        out.push('\n');
        for join in joins {
            writeln!(out, "{join}")?;
        }
    }
    if tables.len() > 1 {
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        writeln!(
            out,
            "\ndiesel::allow_tables_to_appear_in_same_query!({},);",
            names.join(", ")
        )?;
    }
    Ok(out)
}

/// Formats with the toolchain's rustfmt, so the file is stable under `cargo fmt`.
fn rustfmt(source: &str, root: &Path) -> Result<String> {
    let mut child = Command::new("rustfmt")
        .current_dir(root)
        .args(["--edition", "2024", "--emit", "stdout", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run rustfmt: {err}"))?;
    child
        .stdin
        .take()
        .ok_or("rustfmt has no stdin")?
        .write_all(source.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err("rustfmt failed on the generated schema".into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Applies the migrations to a temporary database and renders its schema.
pub fn generate() -> Result<String> {
    let path = std::env::temp_dir().join(format!(
        "skill-fleet-schema-{}-{}.db",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    ));
    let db = TempDb(path);
    let url = db.0.display().to_string();
    let migrations = FileBasedMigrations::from_path(project_root().join("migrations/sqlite"))?;
    let mut conn = SqliteConnection::establish(&url)?;
    conn.run_pending_migrations(migrations)?;
    let tables = read_tables(&mut conn)?;
    drop(conn);
    rustfmt(&render(&tables)?, &project_root())
}

/// Checks that `migrations/postgres/` makes the tables `sqlite` (the rendered SQLite schema)
/// describes, on a fresh database of the test kit's PostgreSQL.
fn check_postgres(sqlite: &str) -> Result {
    let postgres = match skill_fleet_testkit::TestPostgres::find() {
        Ok(postgres) => postgres,
        Err(reason) if std::env::var_os("CI").is_some() => {
            return Err(
                format!("no PostgreSQL to check migrations/postgres/ against: {reason}").into(),
            );
        }
        Err(reason) => {
            println!("skipped the PostgreSQL half (migrations/postgres/): {reason}");
            return Ok(());
        }
    };
    let database = postgres.database();
    let migrations = FileBasedMigrations::from_path(project_root().join("migrations/postgres"))?;
    let mut conn = PgConnection::establish(&database.url)?;
    conn.run_pending_migrations(migrations)?;
    let tables = read_pg_tables(&mut conn)?;
    drop(conn);
    let rendered = rustfmt(&render(&tables)?, &project_root())?;
    if rendered != sqlite {
        let diff: Vec<String> = rendered
            .lines()
            .zip(sqlite.lines())
            .filter(|(pg, lite)| pg != lite)
            .map(|(pg, lite)| format!("  sqlite:   {lite}\n  postgres: {pg}"))
            .take(10)
            .collect();
        return Err(format!(
            "migrations/postgres/ and migrations/sqlite/ make different tables:\n{}",
            diff.join("\n")
        )
        .into());
    }
    println!("migrations/postgres/ makes the same tables");
    Ok(())
}

#[derive(QueryableByName)]
struct PgColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Integer)]
    not_null: i32,
    #[diesel(sql_type = Integer)]
    pk: i32,
}

/// A PostgreSQL column type as the SQLite declaration [`diesel_type`] maps to the same diesel
/// type. `integer` becomes `INT4`, not `INTEGER`: only SQLite's `INTEGER PRIMARY KEY` is the
/// 64-bit rowid.
fn pg_declared(table: &str, column: &str, data_type: &str) -> Result<&'static str> {
    Ok(match data_type {
        "bigint" => "BIGINT",
        "integer" => "INT4",
        "text" => "TEXT",
        "double precision" => "DOUBLE",
        "timestamp without time zone" => "TIMESTAMP",
        "boolean" => "BOOLEAN",
        "bytea" => "BLOB",
        other => {
            return Err(format!(
                "column `{table}.{column}` has PostgreSQL type `{other}` that the generator \
                 does not map"
            )
            .into());
        }
    })
}

fn read_pg_tables(conn: &mut PgConnection) -> Result<Vec<Table>> {
    let names: Vec<TableName> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' \
         AND table_name <> '__diesel_schema_migrations' ORDER BY table_name",
    )
    .load(conn)?;
    let mut tables = Vec::new();
    for TableName { name } in names {
        let raw: Vec<PgColumn> = diesel::sql_query(
            "SELECT c.column_name::text AS name, c.data_type::text AS data_type, \
             (c.is_nullable = 'NO')::int4 AS not_null, coalesce(k.position, 0)::int4 AS pk \
             FROM information_schema.columns c \
             LEFT JOIN (SELECT kcu.column_name, kcu.ordinal_position AS position \
               FROM information_schema.table_constraints tc \
               JOIN information_schema.key_column_usage kcu \
                 ON kcu.constraint_name = tc.constraint_name \
                 AND kcu.table_schema = tc.table_schema AND kcu.table_name = tc.table_name \
               WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = 'public' \
                 AND tc.table_name = $1) k ON k.column_name = c.column_name \
             WHERE c.table_schema = 'public' AND c.table_name = $1 ORDER BY c.ordinal_position",
        )
        .bind::<Text, _>(&name)
        .load(conn)?;
        let columns = raw
            .into_iter()
            .map(|c| {
                Ok(ColumnInfo {
                    sql_type: pg_declared(&name, &c.name, &c.data_type)?.to_owned(),
                    name: c.name,
                    not_null: c.not_null,
                    pk: c.pk,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut foreign_keys: Vec<ForeignKey> = diesel::sql_query(
            "SELECT ccu.table_name::text AS target, kcu.column_name::text AS column \
             FROM information_schema.table_constraints tc \
             JOIN information_schema.key_column_usage kcu \
               ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema \
             JOIN information_schema.constraint_column_usage ccu \
               ON ccu.constraint_name = tc.constraint_name AND ccu.table_schema = tc.table_schema \
             WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = 'public' \
               AND tc.table_name = $1",
        )
        .bind::<Text, _>(&name)
        .load(conn)?;
        foreign_keys.sort_by(|a, b| (&a.target, &a.column).cmp(&(&b.target, &b.column)));
        tables.push(Table {
            name,
            columns,
            foreign_keys,
        });
    }
    Ok(tables)
}
