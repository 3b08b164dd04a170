//! Output of client commands: a table on a terminal, JSON otherwise, or as `-o` says.

use std::io::IsTerminal;

use clap::ValueEnum;
use comfy_table::{Table, presets};
use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

impl Format {
    pub fn resolve(choice: Option<Format>) -> Format {
        choice.unwrap_or(if std::io::stdout().is_terminal() { Format::Table } else { Format::Json })
    }
}

/// Prints one value. In table form, a list prints `columns` as a table (one row per item), and
/// an object prints as field/value rows.
pub fn print<T: Serialize>(format: Format, value: &T, columns: &[&str]) -> anyhow::Result<()> {
    let value = serde_json::to_value(value)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(&value)?),
        Format::Table => println!("{}", table(&value, columns)),
    }
    Ok(())
}

fn table(value: &Value, columns: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    match value {
        Value::Array(items) => {
            table.set_header(columns.iter().map(|c| c.to_uppercase().replace('_', " ")));
            for item in items {
                table.add_row(columns.iter().map(|c| cell(&item[*c])));
            }
        }
        Value::Object(fields) => {
            for (k, v) in fields {
                table.add_row(vec![k.clone(), cell(v)]);
            }
        }
        other => {
            table.add_row(vec![cell(other)]);
        }
    }
    table
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(map) if map.values().all(|v| v.is_string()) => {
            map.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}
