//! Socket setup for every connection pgcat opens or accepts: TCP_NODELAY,
//! keepalives and TCP_USER_TIMEOUT (set with socket2), and the read-back
//! of those settings and of TCP_INFO for display.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::config::General;

/// The socket options pgcat applies, from `[general]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketSettings {
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_count: u32,
    /// None leaves the OS default.
    pub user_timeout: Option<Duration>,
}

impl SocketSettings {
    pub fn from_general(g: &General) -> Self {
        SocketSettings {
            keepalive_idle: Duration::from_secs(g.tcp_keepalives_idle),
            keepalive_interval: Duration::from_secs(g.tcp_keepalives_interval),
            keepalive_count: g.tcp_keepalives_count,
            user_timeout: super::config::millis(g.tcp_user_timeout),
        }
    }

    /// Applies the settings to a connected or accepted socket.
    pub fn apply(&self, sock: SockRef<'_>) -> io::Result<()> {
        sock.set_nodelay(true)?;
        let keepalive = TcpKeepalive::new()
            .with_time(self.keepalive_idle)
            .with_interval(self.keepalive_interval)
            .with_retries(self.keepalive_count);
        sock.set_tcp_keepalive(&keepalive)?;
        sock.set_tcp_user_timeout(self.user_timeout)?;
        Ok(())
    }
}

/// Connects to `host:port` with the settings applied before the SYN, so
/// that TCP_USER_TIMEOUT also bounds the handshake. Tries each resolved
/// address in turn.
pub async fn connect(host: &str, port: u16, settings: &SocketSettings) -> io::Result<TcpStream> {
    each_address((host, port), host, "connect to", |addr| async move {
        let socket = tcp_socket(addr)?;
        settings.apply(SockRef::from(&socket))?;
        socket.connect(addr).await
    })
    .await
}

/// Tries `f` on each address `target` resolves to, in turn: the first
/// success, else the last error (`NAME: no addresses to WHAT` when it
/// resolves to none).
async fn each_address<T, F: Future<Output = io::Result<T>>>(
    target: impl tokio::net::ToSocketAddrs,
    name: &str,
    what: &str,
    mut f: impl FnMut(SocketAddr) -> F,
) -> io::Result<T> {
    let mut last = None;
    for addr in tokio::net::lookup_host(target).await? {
        match f(addr).await {
            Ok(done) => return Ok(done),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name}: no addresses to {what}"),
        )
    }))
}

/// A TCP socket of the address's family.
fn tcp_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// Whether a connection accepted on a listening socket starts with the
/// listener's TCP_NODELAY, keepalive and TCP_USER_TIMEOUT settings. Linux
/// copies them (the accepted socket is a clone of the listener's), so
/// pgcat sets them once on the listener instead of six times per login;
/// elsewhere each accepted socket gets them itself.
pub const ACCEPTED_SOCKETS_INHERIT: bool = cfg!(target_os = "linux");

/// Binds the client listener on `addr` (`host:port`; each resolved
/// address in turn): SO_REUSEADDR as tokio sets it, `settings` on the
/// listening socket, and a listen queue of `backlog` connections. The
/// [`Listening`] records what the socket was given.
pub async fn listen(
    addr: &str,
    settings: &SocketSettings,
    backlog: u32,
) -> io::Result<(TcpListener, Listening)> {
    let listener = each_address(addr, addr, "listen on", |a| async move {
        let socket = tcp_socket(a)?;
        socket.set_reuseaddr(true)?;
        settings.apply(SockRef::from(&socket))?;
        socket.bind(a)?;
        socket.listen(queue_len(backlog))
    })
    .await?;
    let listening = Listening {
        settings: *settings,
        backlog,
        unsure: 0,
    };
    Ok((listener, listening))
}

/// listen(2) takes an int; the kernel caps it at `net.core.somaxconn`.
fn queue_len(backlog: u32) -> u32 {
    backlog.min(i32::MAX as u32)
}

/// What the listening socket was last given: the accept loop compares it
/// with the running config at each accept, and after a reload that
/// changed it, sets the listener again and sets the connections that were
/// already queued (at most one queue's worth) one by one.
#[derive(Debug)]
pub struct Listening {
    settings: SocketSettings,
    backlog: u32,
    /// Accepts left whose socket may predate the listener's settings.
    unsure: u32,
}

impl Listening {
    /// Called for each accepted connection with the settings and backlog
    /// the config holds now: updates the listener when they changed, and
    /// sets the connection's own options when it cannot rely on the
    /// listener's. Errors are the caller's to log; the connection is kept.
    pub fn accepted(
        &mut self,
        listener: &TcpListener,
        stream: &TcpStream,
        settings: SocketSettings,
        backlog: u32,
    ) -> io::Result<()> {
        let mut result = Ok(());
        if settings != self.settings || backlog != self.backlog {
            result = settings
                .apply(SockRef::from(listener))
                .and_then(|()| SockRef::from(listener).listen(queue_len(backlog) as i32));
            // The queue held at most the larger of the two backlogs (plus
            // one): those connections were cloned from the old settings.
            // A listener that could not be set leaves every later
            // connection to be set on its own.
            self.unsure = match result {
                Ok(()) => self.backlog.max(backlog).saturating_add(1),
                Err(_) => u32::MAX,
            };
            self.settings = settings;
            self.backlog = backlog;
        }
        if !ACCEPTED_SOCKETS_INHERIT || self.unsure > 0 {
            self.unsure = self.unsure.saturating_sub(1);
            let applied = settings.apply(SockRef::from(stream));
            result = result.and(applied);
        }
        result
    }
}

/// What the kernel says about one connection's keepalive settings and
/// health, read with getsockopt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SocketInfo {
    pub keepalive: bool,
    pub keepalive_idle_s: u32,
    pub keepalive_interval_s: u32,
    pub keepalive_count: u32,
    pub user_timeout_ms: u32,
    /// Smoothed round-trip time in microseconds.
    pub rtt_us: u32,
    /// Keepalive or zero-window probes sent without an answer.
    pub probes: u8,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Retransmissions of the current unacknowledged segment.
    pub retransmits: u8,
    pub total_retrans: u32,
    /// Milliseconds since data was last received.
    pub last_data_recv_ms: u32,
}

/// Reads the socket options and TCP_INFO of a connection.
pub fn socket_info(sock: SockRef<'_>) -> io::Result<SocketInfo> {
    use std::os::fd::AsRawFd;
    let mut info = SocketInfo {
        keepalive: sock.keepalive()?,
        keepalive_idle_s: sock.keepalive_time()?.as_secs() as u32,
        keepalive_interval_s: sock.keepalive_interval()?.as_secs() as u32,
        keepalive_count: sock.keepalive_retries()?,
        user_timeout_ms: sock
            .tcp_user_timeout()?
            .map(|d| d.as_millis() as u32)
            .unwrap_or(0),
        ..Default::default()
    };
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len`
    // bytes and we pass the size of the struct we own.
    unsafe {
        let mut raw: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut raw as *mut _ as *mut libc::c_void,
            &mut len,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        info.rtt_us = raw.tcpi_rtt;
        info.probes = raw.tcpi_probes;
        info.unacked = raw.tcpi_unacked;
        info.retransmits = raw.tcpi_retransmits;
        info.total_retrans = raw.tcpi_total_retrans;
        info.last_data_recv_ms = raw.tcpi_last_data_recv;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settings_read_back_on_both_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = SocketSettings {
            keepalive_idle: Duration::from_secs(7),
            keepalive_interval: Duration::from_secs(3),
            keepalive_count: 4,
            user_timeout: Some(Duration::from_millis(9000)),
        };
        let client = connect("127.0.0.1", addr.port(), &settings).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        settings.apply(SockRef::from(&accepted)).unwrap();
        for s in [&client, &accepted] {
            let info = socket_info(SockRef::from(s)).unwrap();
            assert!(info.keepalive);
            assert_eq!(info.keepalive_idle_s, 7);
            assert_eq!(info.keepalive_interval_s, 3);
            assert_eq!(info.keepalive_count, 4);
            assert_eq!(info.user_timeout_ms, 9000);
            assert!(s.nodelay().unwrap());
        }
    }

    fn settings(idle: u64) -> SocketSettings {
        SocketSettings {
            keepalive_idle: Duration::from_secs(idle),
            keepalive_interval: Duration::from_secs(3),
            keepalive_count: 4,
            user_timeout: Some(Duration::from_millis(9000)),
        }
    }

    fn idle_of(s: &TcpStream) -> u32 {
        let info = socket_info(SockRef::from(s)).unwrap();
        assert!(info.keepalive);
        assert!(s.nodelay().unwrap());
        assert_eq!(info.user_timeout_ms, 9000);
        info.keepalive_idle_s
    }

    /// The listen queue as `ss` reports it (Send-Q of a listening socket).
    fn backlog_of(listener: &TcpListener) -> u32 {
        let port = listener.local_addr().unwrap().port();
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) must be installed");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no listener in {text:?}"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn accepted_sockets_take_the_listeners_settings_and_follow_a_change() {
        const { assert!(ACCEPTED_SOCKETS_INHERIT, "these tests run on Linux") };
        let (listener, mut listening) = listen("127.0.0.1:0", &settings(7), 300).await.unwrap();
        assert_eq!(backlog_of(&listener), 300);
        let port = listener.local_addr().unwrap().port();

        // Nothing changed: the accepted socket has the listener's options
        // without a setsockopt of its own.
        let _c1 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (a1, _) = listener.accept().await.unwrap();
        listening
            .accepted(&listener, &a1, settings(7), 300)
            .unwrap();
        assert_eq!(idle_of(&a1), 7);

        // Two connections wait in the queue, cloned from the old settings,
        // when a reload changes them: both get the new ones, and so does
        // a connection that arrives after the listener was set.
        let _c2 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _c3 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (a2, _) = listener.accept().await.unwrap();
        assert_eq!(idle_of(&a2), 7, "queued before the change");
        listening
            .accepted(&listener, &a2, settings(11), 40)
            .unwrap();
        assert_eq!(idle_of(&a2), 11);
        assert_eq!(backlog_of(&listener), 40);
        let (a3, _) = listener.accept().await.unwrap();
        assert_eq!(idle_of(&a3), 7, "queued before the change");
        listening
            .accepted(&listener, &a3, settings(11), 40)
            .unwrap();
        assert_eq!(idle_of(&a3), 11);
        let _c4 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (a4, _) = listener.accept().await.unwrap();
        assert_eq!(idle_of(&a4), 11, "cloned from the updated listener");
        listening
            .accepted(&listener, &a4, settings(11), 40)
            .unwrap();
        assert_eq!(idle_of(&a4), 11);
    }
}
