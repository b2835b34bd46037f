//! Dashboard state and what keys do to it. No drawing here: `ui` renders
//! an [`App`], and the runner performs the [`Command`]s keys produce
//! (reload, the editor round trip, pause), so both can be tested apart.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use crate::proxy::stats::snapshot::{PoolSnapshot, Snapshot};

use super::keys::Key;
use super::LogBuffer;

/// Panels that take the arrow keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Pools,
    Servers,
    Mirrors,
    Logs,
}

/// Fields `E` can change in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    PoolSize,
    PoolMode,
    KeepalivesIdle,
    KeepalivesInterval,
    KeepalivesCount,
    UserTimeout,
}

impl Field {
    pub const ALL: [Field; 6] = [
        Field::PoolSize,
        Field::PoolMode,
        Field::KeepalivesIdle,
        Field::KeepalivesInterval,
        Field::KeepalivesCount,
        Field::UserTimeout,
    ];

    /// The key as written in the config file.
    pub fn key(self) -> &'static str {
        match self {
            Field::PoolSize => "pool_size",
            Field::PoolMode => "pool_mode",
            Field::KeepalivesIdle => "tcp_keepalives_idle",
            Field::KeepalivesInterval => "tcp_keepalives_interval",
            Field::KeepalivesCount => "tcp_keepalives_count",
            Field::UserTimeout => "tcp_user_timeout",
        }
    }
}

/// The in-place edit form of `E`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPlaceEdit {
    pub db: String,
    pub user: String,
    pub field: usize,
    pub input: String,
}

impl InPlaceEdit {
    pub fn field(&self) -> Field {
        Field::ALL[self.field]
    }
}

/// Side effects a key asks for; the runner performs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Reload,
    /// Open the config (or the rejected copy being fixed) in $EDITOR.
    Edit,
    /// Write one field of the config file and reload.
    Apply {
        db: String,
        user: String,
        field: Field,
        value: String,
    },
    Pause {
        db: String,
        user: String,
        paused: bool,
    },
    Quit,
}

/// What the header says about the last action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub text: String,
    pub error: bool,
}

pub struct App {
    pub snapshot: Option<Snapshot>,
    /// Previous totals, for queries and transactions per second.
    previous: Option<(Instant, u64, u64)>,
    pub qps: f64,
    pub tps: f64,
    pub selected: usize,
    pub focus: Focus,
    pub scroll: usize,
    pub filter: String,
    pub filtering: bool,
    pub help: bool,
    pub editing: Option<InPlaceEdit>,
    pub message: Option<Message>,
    /// Mirror lag in ms per mirror, one sample per refresh.
    pub lag_history: HashMap<String, VecDeque<u64>>,
    /// Pools rebuilt by the last reload, to mark their hash.
    pub logs: LogBuffer,
    /// Editing is offered only where the file is here.
    pub config_path: Option<PathBuf>,
    /// A rejected edit waiting to be fixed: `e` reopens it.
    pub pending_edit: Option<PathBuf>,
    /// The editor `e` runs: $VISUAL, $EDITOR or vi.
    pub editor: String,
    pub quit: bool,
    pub remote: bool,
}

/// Samples of lag kept per mirror: two minutes at one per second.
pub const LAG_HISTORY: usize = 120;

impl App {
    pub fn new(logs: LogBuffer, config_path: Option<PathBuf>, remote: bool) -> Self {
        App {
            snapshot: None,
            previous: None,
            qps: 0.0,
            tps: 0.0,
            selected: 0,
            focus: Focus::Pools,
            scroll: 0,
            filter: String::new(),
            filtering: false,
            help: false,
            editing: None,
            message: None,
            lag_history: HashMap::new(),
            logs,
            config_path,
            pending_edit: None,
            editor: super::editor::editor_command(),
            quit: false,
            remote,
        }
    }

    /// Takes a new snapshot: rates, lag history, selection bounds.
    pub fn update(&mut self, snapshot: Snapshot) {
        let now = Instant::now();
        let queries: u64 = snapshot.pools.iter().map(|p| p.totals.query_count).sum();
        let xacts: u64 = snapshot.pools.iter().map(|p| p.totals.xact_count).sum();
        if let Some((t, q, x)) = self.previous {
            let secs = now.duration_since(t).as_secs_f64();
            if secs > 0.0 {
                self.qps = queries.saturating_sub(q) as f64 / secs;
                self.tps = xacts.saturating_sub(x) as f64 / secs;
            }
        }
        self.previous = Some((now, queries, xacts));
        for p in &snapshot.pools {
            for m in &p.mirrors {
                let key = mirror_key(p, m);
                let h = self.lag_history.entry(key).or_default();
                h.push_back(m.lag_current_us.map(|us| us as u64 / 1000).unwrap_or(0));
                while h.len() > LAG_HISTORY {
                    h.pop_front();
                }
            }
        }
        self.snapshot = Some(snapshot);
        let n = self.visible_pools().len();
        if n > 0 && self.selected >= n {
            self.selected = n - 1;
        }
    }

    /// Pools shown under the filter.
    pub fn visible_pools(&self) -> Vec<&PoolSnapshot> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        let f = self.filter.to_lowercase();
        s.pools
            .iter()
            .filter(|p| {
                f.is_empty()
                    || p.db.to_lowercase().contains(&f)
                    || p.user.to_lowercase().contains(&f)
            })
            .collect()
    }

    pub fn selected_pool(&self) -> Option<&PoolSnapshot> {
        self.visible_pools().get(self.selected).copied()
    }

    /// Whether the last reload rebuilt this pool.
    pub fn changed_at_last_reload(&self, db: &str) -> bool {
        self.snapshot
            .as_ref()
            .and_then(|s| s.reloads.last())
            .is_some_and(|r| r.ok && r.changed.iter().any(|c| c == db))
    }

    pub fn say(&mut self, text: impl Into<String>, error: bool) {
        self.message = Some(Message {
            text: text.into(),
            error,
        });
    }

    /// Handles one key; returns what the runner should do.
    pub fn on_key(&mut self, key: Key) -> Option<Command> {
        if let Some(edit) = self.editing.as_mut() {
            match key {
                Key::Esc => self.editing = None,
                Key::Tab | Key::Down => {
                    edit.field = (edit.field + 1) % Field::ALL.len();
                    edit.input.clear();
                }
                Key::Up | Key::BackTab => {
                    edit.field = (edit.field + Field::ALL.len() - 1) % Field::ALL.len();
                    edit.input.clear();
                }
                Key::Backspace => {
                    edit.input.pop();
                }
                Key::Char(c) => edit.input.push(c),
                Key::Enter => {
                    let edit = self.editing.take().expect("editing");
                    if edit.input.trim().is_empty() {
                        self.say("nothing entered; no change", true);
                        return None;
                    }
                    return Some(Command::Apply {
                        field: edit.field(),
                        db: edit.db,
                        user: edit.user,
                        value: edit.input.trim().to_string(),
                    });
                }
                _ => {}
            }
            return None;
        }
        if self.filtering {
            match key {
                Key::Enter => self.filtering = false,
                Key::Esc => {
                    self.filtering = false;
                    self.filter.clear();
                }
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.selected = 0;
            return None;
        }
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            if key != Key::Char('q') {
                return None;
            }
        }
        match key {
            Key::Char('q') | Key::CtrlC => {
                self.quit = true;
                Some(Command::Quit)
            }
            Key::Char('r') => Some(Command::Reload),
            Key::Char('e') => {
                if self.remote || self.config_path.is_none() {
                    self.say(
                        "editing is only offered where the config file is (pgcat --tui)",
                        true,
                    );
                    None
                } else {
                    Some(Command::Edit)
                }
            }
            Key::Char('E') => {
                if self.remote || self.config_path.is_none() {
                    self.say(
                        "editing is only offered where the config file is (pgcat --tui)",
                        true,
                    );
                    return None;
                }
                let (db, user) = self
                    .selected_pool()
                    .map(|p| (p.db.clone(), p.user.clone()))?;
                self.editing = Some(InPlaceEdit {
                    db,
                    user,
                    field: 0,
                    input: String::new(),
                });
                None
            }
            Key::Char('p') => {
                let p = self.selected_pool()?;
                Some(Command::Pause {
                    db: p.db.clone(),
                    user: p.user.clone(),
                    paused: !p.paused,
                })
            }
            Key::Char('/') => {
                self.filtering = true;
                None
            }
            Key::Char('?') => {
                self.help = true;
                None
            }
            Key::Tab => {
                self.focus = match self.focus {
                    Focus::Pools => Focus::Servers,
                    Focus::Servers => Focus::Mirrors,
                    Focus::Mirrors => Focus::Logs,
                    Focus::Logs => Focus::Pools,
                };
                self.scroll = 0;
                None
            }
            Key::Up | Key::Char('k') => {
                if self.focus == Focus::Pools {
                    self.selected = self.selected.saturating_sub(1);
                } else {
                    self.scroll = self.scroll.saturating_sub(1);
                }
                None
            }
            Key::Down | Key::Char('j') => {
                if self.focus == Focus::Pools {
                    let n = self.visible_pools().len();
                    if self.selected + 1 < n {
                        self.selected += 1;
                    }
                } else {
                    self.scroll += 1;
                }
                None
            }
            _ => None,
        }
    }
}

/// Identifies a mirror across snapshots.
pub fn mirror_key(p: &PoolSnapshot, m: &crate::proxy::mirror::MirrorSnapshot) -> String {
    format!(
        "{}/{}/{}:{}>{}:{}",
        p.db, p.user, m.server_host, m.server_port, m.host, m.port
    )
}
