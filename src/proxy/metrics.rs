//! Prometheus exporter: `GET /metrics` in the text exposition format,
//! rendered from [`Snapshot`] like everything else that reports.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::stats::snapshot::Snapshot;
use super::Shared;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    tracing::info!(addr = ?listener.local_addr().ok(), "Prometheus exporter listening");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let settings = super::net::SocketSettings::from_general(&shared.config.load().general);
        let _ = settings.apply(socket2::SockRef::from(&stream));
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &shared)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || request.len() > 16 * 1024 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?"))
    {
        ("200 OK", render(&shared.snapshot(false)))
    } else {
        ("404 Not Found", "not found; try /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// A per-mirror series: name, type, help text, and how to read it.
type MirrorSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&super::mirror::MirrorSnapshot) -> f64,
);

/// A per-pool counter: name, help text, and how to read it.
type Counter = (&'static str, &'static str, fn(&super::stats::Totals) -> f64);

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            let _ = write!(self.out, "{{");
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    let _ = write!(self.out, ",");
                }
                let _ = write!(self.out, "{k}=\"{}\"", esc(v));
            }
            let _ = write!(self.out, "}}");
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Renders a snapshot in the Prometheus text format.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(8192);
    let mut f = Family { out: &mut out };

    f.header("pgcat_info", "gauge", "Version of the running pgcat.");
    f.sample("pgcat_info", &[("version", &s.version)], 1.0);
    f.header(
        "pgcat_uptime_seconds",
        "gauge",
        "Seconds since pgcat started.",
    );
    f.sample(
        "pgcat_uptime_seconds",
        &[],
        s.taken_at_unix.saturating_sub(s.started_at_unix) as f64,
    );

    f.header(
        "pgcat_reloads_total",
        "counter",
        "Config reloads attempted.",
    );
    f.sample("pgcat_reloads_total", &[], s.reload_count as f64);
    f.header(
        "pgcat_reload_failures_total",
        "counter",
        "Config reloads that failed and changed nothing.",
    );
    f.sample("pgcat_reload_failures_total", &[], s.reload_failures as f64);
    if let Some(last) = s.reloads.last() {
        f.header(
            "pgcat_last_reload_success",
            "gauge",
            "1 when the last reload applied, 0 when it failed.",
        );
        f.sample(
            "pgcat_last_reload_success",
            &[],
            if last.ok { 1.0 } else { 0.0 },
        );
        f.header(
            "pgcat_last_reload_timestamp_seconds",
            "gauge",
            "When the last reload ran.",
        );
        f.sample(
            "pgcat_last_reload_timestamp_seconds",
            &[],
            last.at_unix as f64,
        );
    }

    if !s.certificates.is_empty() {
        f.header(
            "pgcat_tls_certificate_expiry_seconds",
            "gauge",
            "When each certificate file in force expires (seconds since the epoch).",
        );
        for c in &s.certificates {
            f.sample(
                "pgcat_tls_certificate_expiry_seconds",
                &[("key", &c.key), ("path", &c.path), ("subject", &c.subject)],
                c.not_after_unix as f64,
            );
        }
    }

    f.header(
        "pgcat_pool_config_info",
        "gauge",
        "One series per pool; the hash label is the pool's config hash, taken when it was built.",
    );
    for p in &s.pools {
        let hash = format!("{:016x}", p.config_hash);
        f.sample(
            "pgcat_pool_config_info",
            &[
                ("pool", &p.db),
                ("user", &p.user),
                ("mode", p.mode),
                ("hash", &hash),
            ],
            1.0,
        );
    }
    f.header(
        "pgcat_pool_rebuilt_timestamp_seconds",
        "gauge",
        "When the pool was last built.",
    );
    for p in &s.pools {
        f.sample(
            "pgcat_pool_rebuilt_timestamp_seconds",
            &[("pool", &p.db), ("user", &p.user)],
            p.built_at_unix as f64,
        );
    }
    f.header(
        "pgcat_pool_size",
        "gauge",
        "Configured server connections per server.",
    );
    for p in &s.pools {
        f.sample(
            "pgcat_pool_size",
            &[("pool", &p.db), ("user", &p.user)],
            p.pool_size as f64,
        );
    }
    f.header("pgcat_pool_paused", "gauge", "1 while the pool is paused.");
    for p in &s.pools {
        f.sample(
            "pgcat_pool_paused",
            &[("pool", &p.db), ("user", &p.user)],
            p.paused as u8 as f64,
        );
    }
    f.header(
        "pgcat_pool_clients",
        "gauge",
        "Clients of the pool by state.",
    );
    for p in &s.pools {
        for (state, n) in [
            ("active", p.cl_active),
            ("waiting", p.cl_waiting),
            ("idle", p.cl_idle),
        ] {
            f.sample(
                "pgcat_pool_clients",
                &[("pool", &p.db), ("user", &p.user), ("state", state)],
                n as f64,
            );
        }
    }
    f.header(
        "pgcat_pool_servers",
        "gauge",
        "Server connections of the pool by state.",
    );
    for p in &s.pools {
        for (state, n) in [
            ("active", p.sv_active),
            ("idle", p.sv_idle),
            ("used", p.sv_used),
            ("login", p.sv_login),
        ] {
            f.sample(
                "pgcat_pool_servers",
                &[("pool", &p.db), ("user", &p.user), ("state", state)],
                n as f64,
            );
        }
    }
    f.header(
        "pgcat_pool_maxwait_seconds",
        "gauge",
        "Longest current wait for a server connection.",
    );
    for p in &s.pools {
        f.sample(
            "pgcat_pool_maxwait_seconds",
            &[("pool", &p.db), ("user", &p.user)],
            p.maxwait_us as f64 / 1e6,
        );
    }
    let counters: [Counter; 11] = [
        (
            "pgcat_pool_transactions_total",
            "Transactions completed.",
            |t| t.xact_count as f64,
        ),
        ("pgcat_pool_queries_total", "Queries sent.", |t| {
            t.query_count as f64
        }),
        (
            "pgcat_pool_server_assignments_total",
            "Server connections handed to clients.",
            |t| t.server_assignment_count as f64,
        ),
        (
            "pgcat_pool_received_bytes_total",
            "Bytes received from clients.",
            |t| t.received as f64,
        ),
        (
            "pgcat_pool_sent_bytes_total",
            "Bytes sent to clients.",
            |t| t.sent as f64,
        ),
        (
            "pgcat_pool_xact_time_seconds_total",
            "Time spent in transactions.",
            |t| t.xact_time_us as f64 / 1e6,
        ),
        (
            "pgcat_pool_query_time_seconds_total",
            "Time spent in queries.",
            |t| t.query_time_us as f64 / 1e6,
        ),
        (
            "pgcat_pool_wait_time_seconds_total",
            "Time clients waited for a server connection.",
            |t| t.wait_time_us as f64 / 1e6,
        ),
        ("pgcat_pool_client_logins_total", "Client logins.", |t| {
            t.client_login_count as f64
        }),
        (
            "pgcat_pool_binds_total",
            "Bind messages from clients.",
            |t| t.bind_count as f64,
        ),
        ("pgcat_pool_errors_total", "Checkouts that failed.", |t| {
            t.errors as f64
        }),
    ];
    for (name, help, get) in counters {
        f.header(name, "counter", help);
        for p in &s.pools {
            f.sample(name, &[("pool", &p.db), ("user", &p.user)], get(&p.totals));
        }
    }
    // Latency histograms: the buckets SHOW STATS reads its percentiles from.
    type Hist = (
        &'static str,
        &'static str,
        fn(&super::stats::snapshot::PoolSnapshot) -> (&[u64], u64),
    );
    let histograms: [Hist; 2] = [
        (
            "pgcat_pool_query_duration_seconds",
            "Request durations, from the first message that expects an answer to ReadyForQuery.",
            |p| (&p.query_hist, p.totals.query_time_us),
        ),
        (
            "pgcat_pool_wait_duration_seconds",
            "Time clients waited for a server connection, per checkout.",
            |p| (&p.wait_hist, p.totals.wait_time_us),
        ),
    ];
    for (name, help, get) in histograms {
        f.header(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for p in &s.pools {
            let (counts, sum_us) = get(p);
            let mut cumulative = 0u64;
            for (i, n) in counts.iter().enumerate() {
                cumulative += n;
                let le = match super::stats::histogram::BOUNDS_US.get(i) {
                    Some(b) => format!("{}", *b as f64 / 1e6),
                    None => "+Inf".to_string(),
                };
                f.sample(
                    &bucket,
                    &[("pool", &p.db), ("user", &p.user), ("le", &le)],
                    cumulative as f64,
                );
            }
            let labels = [("pool", p.db.as_str()), ("user", p.user.as_str())];
            f.sample(&format!("{name}_sum"), &labels, sum_us as f64 / 1e6);
            f.sample(&format!("{name}_count"), &labels, cumulative as f64);
        }
    }
    f.header(
        "pgcat_server_connections",
        "gauge",
        "Open connections per server of each pool.",
    );
    for p in &s.pools {
        for sv in &p.servers {
            let port = sv.port.to_string();
            f.sample(
                "pgcat_server_connections",
                &[
                    ("pool", &p.db),
                    ("user", &p.user),
                    ("host", &sv.host),
                    ("port", &port),
                    ("database", &sv.database),
                    ("role", sv.role),
                ],
                sv.connections as f64,
            );
        }
    }
    f.header(
        "pgcat_server_banned",
        "gauge",
        "1 while the server is banned.",
    );
    for p in &s.pools {
        for sv in &p.servers {
            let port = sv.port.to_string();
            f.sample(
                "pgcat_server_banned",
                &[
                    ("pool", &p.db),
                    ("user", &p.user),
                    ("host", &sv.host),
                    ("port", &port),
                ],
                sv.banned as u8 as f64,
            );
        }
    }
    f.header(
        "pgcat_server_replica_lag_seconds",
        "gauge",
        "Replay lag of each server as the monitor last measured it (pools with replica_max_lag or auto roles).",
    );
    for p in &s.pools {
        for sv in &p.servers {
            let Some(lag) = sv.lag_ms else { continue };
            let port = sv.port.to_string();
            f.sample(
                "pgcat_server_replica_lag_seconds",
                &[
                    ("pool", &p.db),
                    ("user", &p.user),
                    ("host", &sv.host),
                    ("port", &port),
                    ("role", sv.role),
                ],
                lag as f64 / 1000.0,
            );
        }
    }
    let mirror_series: [MirrorSeries; 7] = [
        (
            "pgcat_mirror_connections",
            "gauge",
            "Open mirror connections.",
            |m| m.connections as f64,
        ),
        (
            "pgcat_mirror_sent_messages_total",
            "counter",
            "Protocol messages sent to the mirror.",
            |m| m.sent_messages as f64,
        ),
        (
            "pgcat_mirror_dropped_transactions_total",
            "counter",
            "Transactions not mirrored because the mirror fell behind or was down.",
            |m| m.dropped_transactions as f64,
        ),
        (
            "pgcat_mirror_errors_total",
            "counter",
            "Mirror connection and IO errors.",
            |m| m.errors as f64,
        ),
        (
            "pgcat_mirror_queue_depth",
            "gauge",
            "Batches waiting for the mirror tasks.",
            |m| m.queue_depth as f64,
        ),
        (
            "pgcat_mirror_lag_seconds",
            "gauge",
            "Latest mirror lag: from handing a request over to the mirror's ReadyForQuery.",
            |m| m.lag_current_us.unwrap_or(0) as f64 / 1e6,
        ),
        (
            "pgcat_mirror_lag_p99_seconds",
            "gauge",
            "99th percentile of mirror lag over the last minute.",
            |m| m.lag_p99_us.unwrap_or(0) as f64 / 1e6,
        ),
    ];
    for (name, kind, help, get) in mirror_series {
        f.header(name, kind, help);
        for p in &s.pools {
            for m in &p.mirrors {
                let server = format!("{}:{}", m.server_host, m.server_port);
                let mirror = format!("{}:{}", m.host, m.port);
                f.sample(
                    name,
                    &[
                        ("pool", &p.db),
                        ("user", &p.user),
                        ("server", &server),
                        ("mirror", &mirror),
                    ],
                    get(m),
                );
            }
        }
    }
    f.header(
        "pgcat_mirror_up",
        "gauge",
        "0 while the mirror is down, else 1.",
    );
    for p in &s.pools {
        for m in &p.mirrors {
            let server = format!("{}:{}", m.server_host, m.server_port);
            let mirror = format!("{}:{}", m.host, m.port);
            f.sample(
                "pgcat_mirror_up",
                &[
                    ("pool", &p.db),
                    ("user", &p.user),
                    ("server", &server),
                    ("mirror", &mirror),
                ],
                if m.state == "down" { 0.0 } else { 1.0 },
            );
        }
    }
    f.header(
        "pgcat_clients",
        "gauge",
        "Client connections by state, admin consoles included.",
    );
    for state in ["active", "waiting", "idle"] {
        let n = s.clients.iter().filter(|c| c.state == state).count();
        f.sample("pgcat_clients", &[("state", state)], n as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
