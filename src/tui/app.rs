//! Dashboard state and what keys do to it. No drawing here: `ui` renders
//! an [`App`], and the runner performs the [`Command`]s keys produce
//! (reload, the editor round trip, pause), so both can be tested apart.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use crate::proxy::stats::histogram::{delta, quantile};
use crate::proxy::stats::snapshot::{ClientSnapshot, PoolSnapshot, Snapshot};

use super::keys::Key;
use super::LogBuffer;

/// Panels that take the arrow keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Pools,
    Servers,
    Clients,
    Mirrors,
    Logs,
}

impl Focus {
    const ORDER: [Focus; 5] = [
        Focus::Pools,
        Focus::Servers,
        Focus::Clients,
        Focus::Mirrors,
        Focus::Logs,
    ];

    fn step(self, forward: bool) -> Focus {
        let i = Focus::ORDER.iter().position(|f| *f == self).unwrap_or(0);
        let n = Focus::ORDER.len();
        Focus::ORDER[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }]
    }
}

/// How the Clients panel is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSort {
    /// Busy clients first (waiting, active, idle in transaction), each
    /// by time in that state, longest first; then idle ones the same way.
    TimeInState,
    /// By client id, oldest connection first.
    Id,
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
    /// End one client's session (confirmed), as the console's KILL_CLIENT.
    KillClient(u64),
    Quit,
}

/// A kill waiting for `y`: the client and how the question names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmKill {
    pub id: u64,
    pub who: String,
}

/// One pool's recent history, one sample per refresh.
#[derive(Debug, Default, Clone)]
pub struct PoolHistory {
    /// Transactions and queries per second.
    pub tps: VecDeque<u64>,
    pub qps: VecDeque<u64>,
    /// Histogram counts at each of the last [`LATENCY_WINDOW`] refreshes.
    latency: VecDeque<(Vec<u64>, Vec<u64>)>,
    /// Percentiles over that window, microseconds.
    pub query_p50: Option<u64>,
    pub query_p99: Option<u64>,
    pub wait_p50: Option<u64>,
    pub wait_p99: Option<u64>,
    last: Option<(Instant, u64, u64)>,
}

/// Samples of throughput kept per pool: three minutes at one a second.
pub const RATE_HISTORY: usize = 180;
/// Refreshes the latency percentiles look back over (about 10 s).
pub const LATENCY_WINDOW: usize = 10;

/// What the header says about the last action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub text: String,
    pub error: bool,
}

pub struct App {
    pub snapshot: Option<Snapshot>,
    /// The pool picked with the arrows; None: all pools.
    pub selected: Option<usize>,
    pub focus: Focus,
    pub scroll: usize,
    /// Filters pools (by database and user) ...
    pub filter: String,
    /// ... and clients (by any column shown), set with `/` in each panel.
    pub client_filter: String,
    pub filtering: bool,
    /// The client row picked in the Clients panel.
    pub client_selected: usize,
    pub client_sort: ClientSort,
    pub confirm: Option<ConfirmKill>,
    /// Per pool (database, user): rates and latency over time.
    pub history: HashMap<(String, String), PoolHistory>,
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
            selected: None,
            focus: Focus::Pools,
            scroll: 0,
            filter: String::new(),
            client_filter: String::new(),
            filtering: false,
            client_selected: 0,
            client_sort: ClientSort::TimeInState,
            confirm: None,
            history: HashMap::new(),
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
        for p in &snapshot.pools {
            let h = self
                .history
                .entry((p.db.clone(), p.user.clone()))
                .or_default();
            h.sample(now, p);
        }
        self.history.retain(|(db, user), _| {
            snapshot
                .pools
                .iter()
                .any(|p| p.db == *db && p.user == *user)
        });
        self.snapshot = Some(snapshot);
        let n = self.visible_pools().len();
        if let Some(sel) = self.selected {
            self.selected = if n == 0 { None } else { Some(sel.min(n - 1)) };
        }
        let c = self.visible_clients().len();
        self.client_selected = self.client_selected.min(c.saturating_sub(1));
    }

    /// Queries and transactions per second of every pool together, as
    /// of the last refresh.
    pub fn rates(&self) -> (u64, u64) {
        let last = |v: &VecDeque<u64>| v.back().copied().unwrap_or(0);
        self.history
            .values()
            .fold((0, 0), |(q, x), h| (q + last(&h.qps), x + last(&h.tps)))
    }

    /// The history of one pool, when it has one.
    pub fn pool_history(&self, p: &PoolSnapshot) -> Option<&PoolHistory> {
        self.history.get(&(p.db.clone(), p.user.clone()))
    }

    /// Clients shown in the Clients panel: not admin consoles, of the
    /// selected pool (all when none), under the client filter, in the
    /// chosen order.
    pub fn visible_clients(&self) -> Vec<&ClientSnapshot> {
        let Some(s) = &self.snapshot else {
            return Vec::new();
        };
        let pool = self.selected_pool();
        let f = self.client_filter.to_lowercase();
        let mut v: Vec<&ClientSnapshot> = s
            .clients
            .iter()
            .filter(|c| !c.admin)
            .filter(|c| pool.is_none_or(|p| p.db == c.db && p.user == c.user))
            .filter(|c| {
                f.is_empty()
                    || [
                        c.user.as_str(),
                        c.db.as_str(),
                        c.addr.as_str(),
                        c.application_name.as_str(),
                        c.activity,
                        c.query.as_deref().unwrap_or(""),
                    ]
                    .iter()
                    .any(|x| x.to_lowercase().contains(&f))
                    || c.id.to_string() == f
            })
            .collect();
        match self.client_sort {
            ClientSort::Id => v.sort_by_key(|c| c.id),
            ClientSort::TimeInState => {
                v.sort_by_key(|c| (c.activity == "idle", std::cmp::Reverse(c.activity_ms), c.id))
            }
        }
        v
    }

    pub fn selected_client(&self) -> Option<&ClientSnapshot> {
        self.visible_clients().get(self.client_selected).copied()
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

    /// The pool picked with the arrows; when none is, the only pool
    /// shown if there is just one. None: the panels show all pools.
    pub fn selected_pool(&self) -> Option<&PoolSnapshot> {
        let pools = self.visible_pools();
        match self.selected {
            Some(i) => pools.get(i).copied(),
            None if pools.len() == 1 => Some(pools[0]),
            None => None,
        }
    }

    /// The pools the Servers, Clients and Mirrors panels show: the
    /// selected one, or all.
    pub fn pools_in_scope(&self) -> Vec<&PoolSnapshot> {
        match self.selected_pool() {
            Some(p) => vec![p],
            None => self
                .snapshot
                .as_ref()
                .map(|s| s.pools.iter().collect())
                .unwrap_or_default(),
        }
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
        if let Some(confirm) = self.confirm.take() {
            // y ends the client; any other key keeps it.
            if key == Key::Char('y') || key == Key::Char('Y') {
                return Some(Command::KillClient(confirm.id));
            }
            self.say(format!("client {} kept", confirm.id), false);
            return None;
        }
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
            let clients = self.focus == Focus::Clients;
            let filter = if clients {
                &mut self.client_filter
            } else {
                &mut self.filter
            };
            match key {
                Key::Enter => self.filtering = false,
                Key::Esc => {
                    self.filtering = false;
                    filter.clear();
                }
                Key::Backspace => {
                    filter.pop();
                }
                Key::Char(c) => filter.push(c),
                _ => {}
            }
            if clients {
                self.client_selected = 0;
            } else {
                self.selected = None;
            }
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
                let Some((db, user)) = self.selected_pool().map(|p| (p.db.clone(), p.user.clone()))
                else {
                    self.say("select a pool first (Tab to Pools, then ↑ ↓)", true);
                    return None;
                };
                self.editing = Some(InPlaceEdit {
                    db,
                    user,
                    field: 0,
                    input: String::new(),
                });
                None
            }
            Key::Char('p') => {
                let Some(p) = self.selected_pool() else {
                    self.say("select a pool first (Tab to Pools, then ↑ ↓)", true);
                    return None;
                };
                Some(Command::Pause {
                    db: p.db.clone(),
                    user: p.user.clone(),
                    paused: !p.paused,
                })
            }
            Key::Char('k') => {
                if self.focus != Focus::Clients {
                    self.say("k ends a client: Tab to Clients and pick one", true);
                    return None;
                }
                let Some(c) = self.selected_client() else {
                    self.say("no client selected", true);
                    return None;
                };
                let who = format!(
                    "{} {}@{} {}:{}{}",
                    c.id,
                    c.user,
                    c.db,
                    c.addr,
                    c.port,
                    if c.application_name.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", c.application_name)
                    }
                );
                self.confirm = Some(ConfirmKill { id: c.id, who });
                None
            }
            Key::Char('s') => {
                if self.focus == Focus::Clients {
                    self.client_sort = match self.client_sort {
                        ClientSort::TimeInState => ClientSort::Id,
                        ClientSort::Id => ClientSort::TimeInState,
                    };
                    self.client_selected = 0;
                }
                None
            }
            Key::Char('/') => {
                self.filtering = true;
                None
            }
            Key::Char('?') => {
                self.help = true;
                None
            }
            Key::Esc => {
                if self.focus == Focus::Pools {
                    self.selected = None;
                }
                None
            }
            Key::Tab | Key::BackTab => {
                self.focus = self.focus.step(key == Key::Tab);
                self.scroll = 0;
                None
            }
            Key::Up => {
                match self.focus {
                    Focus::Pools => {
                        self.selected = match self.selected {
                            None | Some(0) => None,
                            Some(i) => Some(i - 1),
                        }
                    }
                    Focus::Clients => self.client_selected = self.client_selected.saturating_sub(1),
                    _ => self.scroll = self.scroll.saturating_sub(1),
                }
                None
            }
            Key::Down => {
                match self.focus {
                    Focus::Pools => {
                        let n = self.visible_pools().len();
                        self.selected = match self.selected {
                            None if n > 0 => Some(0),
                            Some(i) if i + 1 < n => Some(i + 1),
                            other => other,
                        }
                    }
                    Focus::Clients => {
                        if self.client_selected + 1 < self.visible_clients().len() {
                            self.client_selected += 1;
                        }
                    }
                    _ => self.scroll += 1,
                }
                None
            }
            _ => None,
        }
    }
}

impl PoolHistory {
    /// Adds one refresh: rates since the last one, and percentiles over
    /// the histogram counts of the last [`LATENCY_WINDOW`] refreshes.
    fn sample(&mut self, now: Instant, p: &PoolSnapshot) {
        let (x, q) = (p.totals.xact_count, p.totals.query_count);
        if let Some((t, x0, q0)) = self.last {
            let secs = now.duration_since(t).as_secs_f64();
            if secs > 0.0 {
                let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs).round() as u64;
                push_bounded(&mut self.tps, rate(x, x0), RATE_HISTORY);
                push_bounded(&mut self.qps, rate(q, q0), RATE_HISTORY);
            }
        }
        self.last = Some((now, x, q));
        self.latency
            .push_back((p.query_hist.clone(), p.wait_hist.clone()));
        while self.latency.len() > LATENCY_WINDOW + 1 {
            self.latency.pop_front();
        }
        let (oldest, newest) = (self.latency.front(), self.latency.back());
        if let (Some((q0, w0)), Some((q1, w1))) = (oldest, newest) {
            // With one sample only, what the pool has counted so far.
            let (dq, dw) = if self.latency.len() > 1 {
                (delta(q1, q0), delta(w1, w0))
            } else {
                (q1.clone(), w1.clone())
            };
            self.query_p50 = quantile(&dq, 0.5);
            self.query_p99 = quantile(&dq, 0.99);
            self.wait_p50 = quantile(&dw, 0.5);
            self.wait_p99 = quantile(&dw, 0.99);
        }
    }

    /// Sets the rates directly (fixtures).
    #[cfg(test)]
    pub fn with_rates(tps: &[u64], qps: &[u64]) -> PoolHistory {
        PoolHistory {
            tps: tps.iter().copied().collect(),
            qps: qps.iter().copied().collect(),
            ..Default::default()
        }
    }
}

fn push_bounded(v: &mut VecDeque<u64>, x: u64, limit: usize) {
    v.push_back(x);
    while v.len() > limit {
        v.pop_front();
    }
}

/// Identifies a mirror across snapshots.
pub fn mirror_key(p: &PoolSnapshot, m: &crate::proxy::mirror::MirrorSnapshot) -> String {
    format!(
        "{}/{}/{}:{}>{}:{}",
        p.db, p.user, m.server_host, m.server_port, m.host, m.port
    )
}
