//! Changing the config from the dashboard. Nothing reaches the config file
//! before it validates: `e` edits a copy in `$EDITOR` and writes it back
//! only when it loads; `E` changes one value with toml_edit, which keeps
//! the file's comments and layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use toml_edit::{value, DocumentMut, Item};

use crate::proxy::config::Config;

use super::app::Field;

/// Hands the terminal to another program and takes it back.
pub trait TerminalControl {
    fn suspend(&mut self);
    fn resume(&mut self);
}

/// What came of an editor round trip.
#[derive(Debug, PartialEq, Eq)]
pub enum EditOutcome {
    /// Saved without changes.
    Unchanged,
    /// Validated and written to the config file.
    Written,
    /// Does not load; the copy is kept so the next `e` reopens it.
    Invalid {
        copy: PathBuf,
        error: String,
    },
    Failed(String),
}

/// Writes a file by renaming a sibling into place, so a reader (autoreload)
/// never sees half of it.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("pgcat-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The program to edit with: `$VISUAL`, `$EDITOR`, or `vi`.
pub fn editor_command() -> String {
    std::env::var("VISUAL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| {
            std::env::var("EDITOR")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| "vi".to_string())
}

/// Runs `editor` on a copy of the config (or on `pending`, a copy rejected
/// before), then validates it and writes it back when it loads.
pub fn edit_external(
    config: &Path,
    pending: Option<&Path>,
    editor: &str,
    term: &mut dyn TerminalControl,
) -> EditOutcome {
    let original = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) => return EditOutcome::Failed(format!("cannot read {}: {e}", config.display())),
    };
    let copy = match pending {
        Some(p) => p.to_path_buf(),
        None => {
            let copy = std::env::temp_dir().join(format!("pgcat-edit-{}.toml", std::process::id()));
            if let Err(e) = std::fs::write(&copy, &original) {
                return EditOutcome::Failed(format!("cannot write {}: {e}", copy.display()));
            }
            copy
        }
    };
    let mut words = editor.split_whitespace();
    let program = words.next().unwrap_or("vi");
    term.suspend();
    let status = Command::new(program).args(words).arg(&copy).status();
    term.resume();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return EditOutcome::Failed(format!("{editor} exited with {s}; nothing changed")),
        Err(e) => return EditOutcome::Failed(format!("cannot run {editor}: {e}")),
    }
    let text = match std::fs::read_to_string(&copy) {
        Ok(t) => t,
        Err(e) => return EditOutcome::Failed(format!("cannot read back {}: {e}", copy.display())),
    };
    if text == original {
        let _ = std::fs::remove_file(&copy);
        return EditOutcome::Unchanged;
    }
    if let Err(e) = Config::parse(&text, &config.display().to_string()) {
        return EditOutcome::Invalid {
            copy,
            error: e.to_string(),
        };
    }
    match write_atomically(config, &text) {
        Ok(()) => {
            let _ = std::fs::remove_file(&copy);
            EditOutcome::Written
        }
        Err(e) => EditOutcome::Failed(format!("cannot write {}: {e}", config.display())),
    }
}

/// Replaces a value, keeping the comments and spacing around the old one.
fn set_keeping_comments(table: &mut dyn toml_edit::TableLike, key: &str, new: toml_edit::Value) {
    match table.get_mut(key).and_then(Item::as_value_mut) {
        Some(old) => {
            let decor = old.decor().clone();
            *old = new;
            *old.decor_mut() = decor;
        }
        None => {
            table.insert(key, value(new));
        }
    }
}

/// Sets one field for the pool `db`/`user` in the config file, keeping
/// comments, after checking that the result loads.
pub fn apply_field(
    config: &Path,
    db: &str,
    user: &str,
    field: Field,
    input: &str,
) -> Result<(), String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let number = || {
        input
            .parse::<i64>()
            .map_err(|_| format!("{} needs a number, got {input:?}", field.key()))
    };
    match field {
        Field::PoolSize => {
            let users = doc["pools"][db]["users"]
                .as_table_like_mut()
                .ok_or_else(|| format!("pools.{db}.users not found"))?;
            let key = users
                .iter()
                .find(|(_, u)| u.get("username").and_then(|n| n.as_str()) == Some(user))
                .map(|(k, _)| k.to_string())
                .ok_or_else(|| format!("user {user} not found in pools.{db}"))?;
            let n = number()?;
            let table = users
                .get_mut(&key)
                .and_then(Item::as_table_like_mut)
                .ok_or_else(|| format!("pools.{db}.users.{key} is not a table"))?;
            set_keeping_comments(table, "pool_size", n.into());
        }
        Field::PoolMode => {
            let pool = doc["pools"][db]
                .as_table_like_mut()
                .ok_or_else(|| format!("pools.{db} not found"))?;
            set_keeping_comments(pool, "pool_mode", input.into());
        }
        Field::KeepalivesIdle
        | Field::KeepalivesInterval
        | Field::KeepalivesCount
        | Field::UserTimeout => {
            let n = number()?;
            let general = doc["general"]
                .as_table_like_mut()
                .ok_or_else(|| "[general] not found".to_string())?;
            set_keeping_comments(general, field.key(), n.into());
        }
    }
    let new_text = doc.to_string();
    Config::parse(&new_text, &config.display().to_string()).map_err(|e| e.to_string())?;
    write_atomically(config, &new_text)
        .map_err(|e| format!("cannot write {}: {e}", config.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# top comment
[general]
admin_username = "a"
admin_password = "a"
# keepalive comment
tcp_keepalives_idle = 5

[pools.app]
pool_mode = "transaction" # mode comment

[pools.app.users.0]
username = "alice"
password = "x"
pool_size = 5 # size comment

[pools.app.shards.0]
database = "app"
servers = [["127.0.0.1", 5432, "primary"]]
"#;

    struct NoTerminal(u32);
    impl TerminalControl for NoTerminal {
        fn suspend(&mut self) {
            self.0 += 1;
        }
        fn resume(&mut self) {
            self.0 += 10;
        }
    }

    fn file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgcat.toml");
        std::fs::write(&path, TEXT).unwrap();
        (dir, path)
    }

    #[test]
    fn in_place_edits_keep_comments_and_validate() {
        let (_d, path) = file();
        apply_field(&path, "app", "alice", Field::PoolSize, "9").unwrap();
        apply_field(&path, "app", "alice", Field::PoolMode, "session").unwrap();
        apply_field(&path, "app", "alice", Field::KeepalivesIdle, "7").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("pool_size = 9"), "{text}");
        assert!(text.contains("pool_mode = \"session\""), "{text}");
        assert!(text.contains("tcp_keepalives_idle = 7"), "{text}");
        for comment in ["# top comment", "# keepalive comment", "# size comment"] {
            assert!(text.contains(comment), "lost {comment}: {text}");
        }
        let (c, _) = Config::parse(&text, "t").unwrap();
        assert_eq!(c.pools["app"].users["0"].pool_size, 9);

        // Invalid values are refused and nothing is written.
        let before = std::fs::read_to_string(&path).unwrap();
        assert!(apply_field(&path, "app", "alice", Field::PoolSize, "0")
            .unwrap_err()
            .contains("must be at least 1"));
        assert!(apply_field(&path, "app", "alice", Field::PoolMode, "statement").is_err());
        assert!(apply_field(&path, "app", "alice", Field::KeepalivesCount, "many").is_err());
        assert!(apply_field(&path, "app", "bob", Field::PoolSize, "3").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    }

    #[test]
    fn external_edit_validates_before_writing() {
        let (dir, path) = file();
        // An "editor" that breaks the file.
        let script = dir.path().join("bad-editor.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\nprintf 'pool_size = \"x\"\\n[broken' > \"$1\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut term = NoTerminal(0);
        let outcome = edit_external(&path, None, script.to_str().unwrap(), &mut term);
        assert_eq!(term.0, 11, "the terminal was suspended and resumed");
        let EditOutcome::Invalid { copy, error } = outcome else {
            panic!("expected Invalid, got {outcome:?}");
        };
        assert!(error.contains(&format!("{}:", path.display())), "{error}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            TEXT,
            "the config file is untouched"
        );

        // Editing again reopens the rejected copy; a fixing editor wins.
        let good = dir.path().join("good-editor.sh");
        std::fs::write(
            &good,
            format!(
                "#!/bin/sh\ncat > \"$1\" <<'EOF'\n{}EOF\n",
                TEXT.replace("pool_size = 5", "pool_size = 6")
            ),
        )
        .unwrap();
        std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let outcome = edit_external(&path, Some(&copy), good.to_str().unwrap(), &mut term);
        assert_eq!(outcome, EditOutcome::Written);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("pool_size = 6"));
        assert!(!copy.exists());

        // Saving unchanged changes nothing.
        let outcome = edit_external(&path, None, "true", &mut term);
        assert_eq!(outcome, EditOutcome::Unchanged);
    }
}
