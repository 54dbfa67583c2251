//! `cargo xtask schema [--check]`: generates `crates/skill-fleet-jobs/src/schema.rs` from the
//! SQL files in `migrations/` (applied to a temporary database, read back through `sqlite_master`,
//! `pragma_table_info` and `pragma_foreign_key_list`), or checks the checked-in file.
//!
//! Type mapping: `INTEGER PRIMARY KEY` (the 64-bit rowid) and `BIGINT` → `BigInt`, other
//! `INT` types → `Integer`, `TEXT` → `Text`, `REAL` → `Double`, `TIMESTAMP` → `Timestamp`,
//! `BOOLEAN` → `Bool`, `BLOB` → `Binary`; nullable columns are `Nullable<…>`.

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
        "//! Diesel table definitions, generated by `cargo xtask schema` from `migrations/`; \
         do not edit.\n",
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
    let migrations = FileBasedMigrations::from_path(project_root().join("migrations"))?;
    let mut conn = SqliteConnection::establish(&url)?;
    conn.run_pending_migrations(migrations)?;
    let tables = read_tables(&mut conn)?;
    drop(conn);
    rustfmt(&render(&tables)?, &project_root())
}
