//! TODO (being written): the Dovecot passwd-file users database.
//! The signatures below are the contract other modules use.
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Pop3,
    Submit,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    /// `{SCHEME}hash` as in the file.
    pub password: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub home: String,
    pub roles: Vec<Role>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("line {line}: {msg}")]
    Parse { line: usize, msg: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Default)]
pub struct UserDb {
    entries: Vec<UserEntry>,
}

impl UserDb {
    pub fn load(path: &Path) -> Result<UserDb, UsersError> {
        let _ = path;
        Ok(UserDb::default())
    }
    pub fn get(&self, name: &str) -> Option<&UserEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
    /// Verify a password; unknown users cost the same as wrong passwords.
    pub fn authenticate(&self, name: &str, password: &[u8]) -> Option<UserEntry> {
        let _ = (name, password);
        None
    }
}

/// A user name that may become a path component: no `/`, no `..`, no control chars.
pub fn validate_name(name: &str) -> Result<(), String> {
    let _ = name;
    Ok(())
}
