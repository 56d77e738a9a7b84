//! The error every `maildird` command ends with, and the exit code `main`
//! maps it to (0 ok, 1 runtime failure, 2 configuration or usage error).

/// A failed command (start-up, admin, tunnel), with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Configuration or usage problem: exit 2 (systemd `RestartPreventExitStatus=2`).
    #[error("{0}")]
    Config(String),
    /// Anything else: exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl CommandError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Config(_) => 2,
            CommandError::Runtime(_) => 1,
        }
    }
}
