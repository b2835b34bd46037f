//! Dashboard keys against a real pgcat: `r` reloads, `e` with an editor
//! that breaks the file keeps the running config and shows why, `E`
//! writes one value and the pool's hash changes.

mod support;

use pgcat::tui::app::{App, Command};
use pgcat::tui::editor::TerminalControl;
use pgcat::tui::keys::Key;
use pgcat::tui::source::Source;
use pgcat::tui::{perform, refresh, LogBuffer};
use support::*;

/// Editors run without a terminal here.
struct NoTerminal;
impl TerminalControl for NoTerminal {
    fn suspend(&mut self) {}
    fn resume(&mut self) {}
}

fn dashboard(proxy: &TestProxy) -> (App, Source) {
    let mut source = Source::Local {
        shared: proxy.handle.shared().clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let mut app = App::new(LogBuffer::default(), source.config_path(), false);
    refresh(&mut app, &mut source);
    (app, source)
}

fn press(app: &mut App, source: &mut Source, key: Key) {
    if let Some(cmd) = app.on_key(key) {
        perform(cmd, app, source, &mut NoTerminal);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_reloads_and_the_header_says_what_changed() {
    let db = PgCluster::shared().create_db("scram-sha-256");
    let text = config_text("", &[PoolSpec::new(&db)]);
    let file = ConfigFile::new(&text);
    let proxy = TestProxy::start_file(&file).await;
    let (mut app, mut source) = dashboard(&proxy);
    let hash = app.selected_pool().unwrap().config_hash;
    file.write(&text.replace("pool_size = 5", "pool_size = 6"));
    assert_eq!(app.on_key(Key::Char('r')), Some(Command::Reload));
    perform(Command::Reload, &mut app, &mut source, &mut NoTerminal);
    let (_, count, _) = proxy.handle.shared().reload_history();
    assert_eq!(count, 1);
    let msg = app.message.clone().unwrap();
    assert!(!msg.error && msg.text.contains(&db.name), "{msg:?}");
    let pool = app.selected_pool().unwrap();
    assert_ne!(pool.config_hash, hash);
    assert_eq!(pool.pool_size, 6);
    assert!(app.changed_at_last_reload(&db.name));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_with_an_editor_that_breaks_the_file_keeps_the_running_config() {
    let db = PgCluster::shared().create_db("scram-sha-256");
    let text = config_text("", &[PoolSpec::new(&db)]);
    let file = ConfigFile::new(&text);
    let proxy = TestProxy::start_file(&file).await;
    let (mut app, mut source) = dashboard(&proxy);
    let dir = tempfile::tempdir().unwrap();
    let editor = dir.path().join("editor.sh");
    // Breaks pool_size on its line, as a person might.
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/pool_size = 5/pool_size = five/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    app.editor = editor.display().to_string();
    press(&mut app, &mut source, Key::Char('e'));
    let msg = app.message.clone().unwrap();
    assert!(msg.error, "{msg:?}");
    let line = text
        .lines()
        .position(|l| l.contains("pool_size = 5"))
        .unwrap()
        + 1;
    assert!(
        msg.text
            .contains(&format!("{}:{line}:", file.path.display())),
        "the error names file and line: {msg:?}"
    );
    assert!(msg.text.contains("edit again"), "{msg:?}");
    assert!(
        app.pending_edit.is_some(),
        "the broken copy is kept for the next e"
    );
    assert_eq!(
        std::fs::read_to_string(&file.path).unwrap(),
        text,
        "the file is untouched"
    );
    let (_, count, _) = proxy.handle.shared().reload_history();
    assert_eq!(count, 0, "nothing was reloaded");
    let client = proxy.connect(&db).await;
    let v: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 1);

    // Editing again reopens the broken copy; this time the editor fixes it.
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/pool_size = five/pool_size = 4/' \"$1\"\n",
    )
    .unwrap();
    press(&mut app, &mut source, Key::Char('e'));
    let msg = app.message.clone().unwrap();
    assert!(!msg.error, "{msg:?}");
    assert!(std::fs::read_to_string(&file.path)
        .unwrap()
        .contains("pool_size = 4"));
    assert_eq!(app.selected_pool().unwrap().pool_size, 4);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capital_e_sets_pool_size_in_the_file_and_the_hash_changes() {
    let db = PgCluster::shared().create_db("scram-sha-256");
    let text = format!(
        "# operators' notes stay\n{}",
        config_text("", &[PoolSpec::new(&db)])
    );
    let file = ConfigFile::new(&text);
    let proxy = TestProxy::start_file(&file).await;
    let (mut app, mut source) = dashboard(&proxy);
    let before = app.selected_pool().unwrap().config_hash;
    press(&mut app, &mut source, Key::Char('E'));
    assert!(app.editing.is_some());
    for c in "7".chars() {
        press(&mut app, &mut source, Key::Char(c));
    }
    press(&mut app, &mut source, Key::Enter);
    let msg = app.message.clone().unwrap();
    assert!(!msg.error, "{msg:?}");
    let written = std::fs::read_to_string(&file.path).unwrap();
    assert!(written.contains("pool_size = 7"), "{written}");
    assert!(
        written.starts_with("# operators' notes stay"),
        "comments preserved"
    );
    let pool = app.selected_pool().unwrap();
    assert_eq!(pool.pool_size, 7);
    assert_ne!(pool.config_hash, before, "the pool's hash changed");
    let admin = proxy.admin().await;
    assert_eq!(
        pool_row(&admin, &db.name).await["pool_size"].as_deref(),
        Some("7")
    );

    // A value that does not validate is refused and nothing is written.
    press(&mut app, &mut source, Key::Char('E'));
    press(&mut app, &mut source, Key::Char('0'));
    press(&mut app, &mut source, Key::Enter);
    assert!(app.message.clone().unwrap().error);
    assert_eq!(std::fs::read_to_string(&file.path).unwrap(), written);
    proxy.stop().await;
}
