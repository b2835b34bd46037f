//! The dashboard: pools with their config hashes, throughput sparklines
//! and latency percentiles, server connections with their keepalive
//! state, clients with what they run, mirrors with their lag, and the log,
//! live; keys to reload, edit the config, pause a pool, end a client.
//!
//! - `app`: state and what keys do (no drawing);
//! - `ui/`: one file per panel;
//! - `keys`: the key map;
//! - `editor`: the `$EDITOR` round trip and in-place edits, validated
//!   before anything is written;
//! - `source`: the engine in this process, or a pgcat elsewhere through
//!   its admin console (`pgcat top`).

pub mod app;
pub mod editor;
pub mod keys;
pub mod source;
pub mod ui;

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ratatui::crossterm::event::{self, Event};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{enable_raw_mode, EnterAlternateScreen};
use ratatui::DefaultTerminal;

use self::app::{App, Command};
use self::editor::{EditOutcome, TerminalControl};
use self::source::Source;

/// Set by a signal handler to close the dashboard as `q` would.
pub static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How often the dashboard takes a snapshot.
const REFRESH: Duration = Duration::from_secs(1);
/// Longest wait for a key between redraws.
const TICK: Duration = Duration::from_millis(250);
/// Log lines kept for the log pane.
const LOG_LINES: usize = 500;

/// Recent log lines, filled by the tracing subscriber in dashboard mode
/// so that logs go to a pane instead of over the screen.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<VecDeque<String>>>);

impl LogBuffer {
    pub fn push(&self, line: String) {
        let mut l = self.0.lock();
        if l.len() == LOG_LINES {
            l.pop_front();
        }
        l.push_back(line);
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().iter().cloned().collect()
    }
}

/// An `io::Write` that turns what it gets into log lines.
pub struct LogWriter {
    buffer: LogBuffer,
    partial: Vec<u8>,
}

impl io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        for &b in data {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.buffer.push(line);
                self.partial.clear();
            } else {
                self.partial.push(b);
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.buffer
                .push(String::from_utf8_lossy(&self.partial).into_owned());
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter {
            buffer: self.clone(),
            partial: Vec::new(),
        }
    }
}

/// Hands the real terminal to the editor and takes it back.
struct RealTerminal<'a>(&'a mut DefaultTerminal);

impl TerminalControl for RealTerminal<'_> {
    fn suspend(&mut self) {
        ratatui::restore();
    }

    fn resume(&mut self) {
        let _ = enable_raw_mode();
        let _ = execute!(io::stdout(), EnterAlternateScreen);
        let _ = self.0.clear();
    }
}

/// Takes a snapshot into the app, reporting a failure in the header.
pub fn refresh(app: &mut App, source: &mut Source) {
    match source.snapshot() {
        Ok(s) => {
            app.update(s);
            if app
                .message
                .as_ref()
                .is_some_and(|m| m.text.starts_with("cannot read"))
            {
                app.message = None;
            }
        }
        Err(e) => app.say(format!("cannot read pgcat: {e}"), true),
    }
}

/// Performs what a key asked for.
pub fn perform(cmd: Command, app: &mut App, source: &mut Source, term: &mut dyn TerminalControl) {
    match cmd {
        Command::Quit => {}
        Command::Reload => match source.reload() {
            Ok(msg) => app.say(msg, false),
            Err(e) => app.say(format!("reload failed, running config kept: {e}"), true),
        },
        Command::Edit => {
            let Some(path) = app.config_path.clone() else {
                return;
            };
            let pending = app.pending_edit.take();
            let program = app.editor.clone();
            match editor::edit_external(&path, pending.as_deref(), &program, term) {
                EditOutcome::Unchanged => app.say("no change", false),
                EditOutcome::Written => match source.apply_file() {
                    Ok(msg) => app.say(format!("saved; {msg}"), false),
                    Err(e) => app.say(format!("saved, but reload failed: {e}"), true),
                },
                EditOutcome::Invalid { copy, error } => {
                    app.say(
                        format!("not saved, running config kept: {error} (e: edit again)"),
                        true,
                    );
                    app.pending_edit = Some(copy);
                }
                EditOutcome::Failed(e) => {
                    app.say(e, true);
                    app.pending_edit = pending;
                }
            }
        }
        Command::Apply {
            db,
            user,
            field,
            value,
        } => {
            let Some(path) = app.config_path.clone() else {
                return;
            };
            match editor::apply_field(&path, &db, &user, field, &value) {
                Ok(()) => match source.apply_file() {
                    Ok(msg) => app.say(format!("{} = {value}; {msg}", field.key()), false),
                    Err(e) => app.say(format!("written, but reload failed: {e}"), true),
                },
                Err(e) => app.say(format!("not written: {e}"), true),
            }
        }
        Command::KillClient(id) => match source.kill_client(id) {
            Ok(()) => app.say(format!("client {id} ended"), false),
            Err(e) => app.say(format!("client {id}: {e}"), true),
        },
        Command::Pause { db, user, paused } => match source.set_paused(&db, &user, paused) {
            Ok(()) => app.say(
                format!("{} {db}/{user}", if paused { "paused" } else { "resumed" }),
                false,
            ),
            Err(e) => app.say(e, true),
        },
    }
    refresh(app, source);
}

/// Runs the dashboard until `q`. Blocks: call it from a thread that may.
pub fn run(mut source: Source, logs: LogBuffer) -> io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let mut app = App::new(logs, source.config_path(), !source.is_local());
    let result = event_loop(&mut terminal, &mut app, &mut source);
    ratatui::restore();
    result
}

fn event_loop(
    terminal: &mut DefaultTerminal,
    app: &mut App,
    source: &mut Source,
) -> io::Result<()> {
    let mut last_refresh: Option<Instant> = None;
    let mut dirty = true;
    while !app.quit && !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        if last_refresh.is_none_or(|t| t.elapsed() >= REFRESH) {
            refresh(app, source);
            last_refresh = Some(Instant::now());
            dirty = true;
        }
        if dirty {
            terminal.draw(|f| ui::draw(f, app))?;
            dirty = false;
        }
        if event::poll(TICK)? {
            match event::read()? {
                Event::Key(k) => {
                    if let Some(key) = keys::map(k) {
                        if let Some(cmd) = app.on_key(key) {
                            perform(cmd, app, source, &mut RealTerminal(terminal));
                        }
                        dirty = true;
                    }
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
    Ok(())
}
