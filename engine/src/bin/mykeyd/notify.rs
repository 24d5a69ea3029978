//! The systemd notification protocol (`sd_notify(3)`), for `Type=notify` units: `READY=1` once
//! the store is open and the certificates are loaded, `RELOADING=1` … `READY=1` around a SIGHUP
//! reload, `STOPPING=1` when the drain starts, `STATUS=` lines for `systemctl status`, and
//! `WATCHDOG=1` pings when the unit sets `WatchdogSec=`.
//!
//! Owns the datagram socket named by `$NOTIFY_SOCKET` and nothing else. Never fails the
//! server: without `$NOTIFY_SOCKET` (not run by systemd) every call is a no-op, and a message
//! that cannot be sent is logged once, not raised, since the service itself is still sound.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Environment variable systemd sets to the notification socket's path (`@` = abstract).
const SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// Environment variables of the watchdog: its period, and the PID it is meant for.
const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";
/// Shortest watchdog period honoured; a smaller `WatchdogSec=` would only burn CPU.
const WATCHDOG_PERIOD_MIN: Duration = Duration::from_millis(100);

static SEND_FAILED_LOGGED: AtomicBool = AtomicBool::new(false);

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd, if it asked for them.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os(SOCKET_ENV) else {
        return;
    };
    if let Err(e) = send(&path, state)
        && !SEND_FAILED_LOGGED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(error = %e, socket = ?path, "could not notify systemd");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
    match bytes.strip_prefix(b"@") {
        // Abstract socket names exist on Linux only (systemd runs nowhere else).
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "abstract notification sockets exist on Linux only",
            ));
        }
        None => {
            sock.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

/// The watchdog period systemd asked for, if it asked this process: half of `WatchdogSec=`,
/// as `sd_watchdog_enabled(3)` advises.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var(WATCHDOG_USEC_ENV).ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var(WATCHDOG_PID_ENV)
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some((Duration::from_micros(usec) / 2).max(WATCHDOG_PERIOD_MIN))
}
