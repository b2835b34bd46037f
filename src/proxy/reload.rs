//! Reload: parse -> validate -> compare per-pool hashes -> swap.
//!
//! Each pool stores the hash of its own config, computed when it was
//! built, and a reload rebuilds exactly the pools whose hash differs from
//! the new file's. Nothing remembers hashes seen before, so going from A
//! to B and back to A applies every time. A file that does not load
//! changes nothing.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::config::{Config, ConfigError};
use super::pool::PoolSet;
use super::stats::{unix_secs, ReloadRecord};
use super::Shared;

/// Reload records kept for the admin console and the dashboard.
const HISTORY: usize = 32;

#[derive(Debug, Default)]
pub struct ReloadLog {
    pub records: VecDeque<ReloadRecord>,
    pub count: u64,
    pub failures: u64,
}

impl ReloadLog {
    fn push(&mut self, record: ReloadRecord) {
        self.count += 1;
        if !record.ok {
            self.failures += 1;
        }
        if self.records.len() == HISTORY {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }
}

/// Re-reads the config file the proxy was started with and applies it.
pub fn reload_file(shared: &Shared, trigger: &str) -> Result<ReloadRecord, ConfigError> {
    // PgCat's words, which its tooling looks for before the errors.
    tracing::info!(trigger, "Reloading config");
    let path = shared.config.load().path.clone();
    let Some(path) = path else {
        let e = ConfigError {
            origin: "config".into(),
            line: None,
            key: None,
            message: "pgcat was started without a config file; nothing to reload".into(),
        };
        record_failure(shared, trigger, &e);
        return Err(e);
    };
    match Config::load(&path) {
        Ok((config, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Ok(apply(shared, config, trigger, &HashSet::new()))
        }
        Err(e) => {
            record_failure(shared, trigger, &e);
            Err(e)
        }
    }
}

fn record_failure(shared: &Shared, trigger: &str, e: &ConfigError) {
    tracing::error!(trigger, "reload failed, keeping the running config: {e}");
    shared.reloads.lock().push(ReloadRecord {
        at_unix: unix_secs(SystemTime::now()),
        trigger: trigger.to_string(),
        ok: false,
        error: Some(e.to_string()),
        changed: Vec::new(),
    });
}

/// Applies a validated config. Pools in `force` are rebuilt even when
/// their hash is unchanged (RECONNECT, KILL).
pub fn apply(
    shared: &Shared,
    mut config: Config,
    trigger: &str,
    force: &HashSet<String>,
) -> ReloadRecord {
    let _one_at_a_time = shared.reload_lock.lock();
    let old_config = shared.config.load_full();
    if config.path.is_none() {
        config.path = old_config.path.clone();
    }
    for key in old_config.general.restart_only_changes(&config.general) {
        tracing::warn!("general.{key} changed; it takes effect after a restart");
    }
    // Certificates first: a file that does not load keeps the previous
    // TLS configs, and the reload reports it.
    let tls_error = match shared.tls.load(&config.general.tls_settings()) {
        Ok(changed) => {
            if changed {
                tracing::info!(trigger, "TLS certificates loaded");
            }
            None
        }
        Err(e) => {
            tracing::error!(
                trigger,
                "TLS files not reloaded, keeping the previous ones: {e}"
            );
            Some(format!("{e}; keeping the previous TLS configuration"))
        }
    };
    let old_pools = shared.pools.load_full();
    let new_pools = PoolSet::build(
        &config,
        Some(&old_pools),
        &shared.registry,
        force,
        &shared.tls,
    );
    let changed = new_pools.changed_since(&old_pools);
    shared.config.store(Arc::new(config));
    shared.publish_pools(Arc::new(new_pools));
    shared.pools.load().retire_replaced(&old_pools);
    let record = ReloadRecord {
        at_unix: unix_secs(SystemTime::now()),
        trigger: trigger.to_string(),
        ok: tls_error.is_none(),
        error: tls_error,
        changed,
    };
    tracing::info!(trigger, changed = ?record.changed, "config reloaded");
    shared.reloads.lock().push(record.clone());
    record
}

fn file_digest(path: &std::path::Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// `general.autoreload`: re-reads the file every interval and reloads
/// when its content changed. A file that fails to load is reported once,
/// not at every tick.
pub async fn run_autoreload(shared: Arc<Shared>) {
    let mut last = shared.config.load().path.as_deref().and_then(file_digest);
    loop {
        let interval = shared.config.load().general.autoreload;
        let Some(ms) = interval else {
            // Off: look again later, a reload may turn it on.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if shared.is_shutting_down() {
            return;
        }
        let Some(path) = shared.config.load().path.clone() else {
            continue;
        };
        let now = file_digest(&path);
        if now.is_some() && now != last {
            last = now;
            let _ = reload_file(&shared, "autoreload");
        }
    }
}
