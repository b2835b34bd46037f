//! Socket setup for every connection pgcat opens or accepts: TCP_NODELAY,
//! keepalives and TCP_USER_TIMEOUT (set with socket2), and the read-back
//! of those settings and of TCP_INFO for display.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};

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
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match connect_addr(addr, settings).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host}: no addresses to connect to"),
        )
    }))
}

async fn connect_addr(addr: SocketAddr, settings: &SocketSettings) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    settings.apply(SockRef::from(&socket))?;
    socket.connect(addr).await
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
}
