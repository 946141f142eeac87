//! Logging through the host: lines end up in the server's structured log
//! (target `policy`), tagged with the policy name and, inside the server, the
//! request's span (uid, kind, namespace). The host keeps at most 32 lines of
//! 2 KiB per evaluation. Natively they go to stderr.

/// Severity of a log line; the numbers are the ABI's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Level {
    /// 0
    Error = 0,
    /// 1
    Warn = 1,
    /// 2
    Info = 2,
    /// 3
    Debug = 3,
}

/// Logs one line at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::abi::log(level as i32, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}
