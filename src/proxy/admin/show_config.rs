//! SHOW CONFIG: every `[general]` key with its value and default, then
//! each pool's settings as `pools.<name>.<key>`. Passwords are masked.

use super::{text, AdminError, Command, Context, Kind, Reply, Table};
use crate::proxy::config::General;

fn render(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub const COMMAND: Command = Command {
    words: &["SHOW", "CONFIG"],
    help: "the running configuration",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    let mut t = Table::new(&[
        ("key", Kind::Text),
        ("value", Kind::Text),
        ("default", Kind::Text),
        ("changeable", Kind::Text),
    ]);
    let config = ctx.shared.config.load_full();
    let current = toml::Value::try_from(&config.general)
        .map_err(|e| AdminError::new("XX000", e.to_string()))?;
    let defaults = toml::Value::try_from(General::default())
        .map_err(|e| AdminError::new("XX000", e.to_string()))?;
    if let (Some(cur), Some(def)) = (current.as_table(), defaults.as_table()) {
        for (k, v) in cur {
            let value = if k.contains("password") {
                "********".to_string()
            } else {
                render(v)
            };
            let default = def.get(k).map(render).unwrap_or_default();
            let changeable = if General::RESTART_ONLY.contains(&k.as_str()) {
                "no"
            } else {
                "yes"
            };
            t.row(vec![text(k), text(value), text(default), text(changeable)]);
        }
    }
    for (name, pool) in &config.pools {
        let Ok(toml::Value::Table(table)) = toml::Value::try_from(pool) else {
            continue;
        };
        for (k, v) in table {
            if k == "users" || k == "shards" {
                continue;
            }
            t.row(vec![
                text(format!("pools.{name}.{k}")),
                text(render(&v)),
                None,
                text("yes"),
            ]);
        }
    }
    Ok(Reply::Rows(t))
}
