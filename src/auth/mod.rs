//! Users and passwords: the Dovecot-compatible passwd-file and hash verification.
//! Blocking and pure; knows nothing of tokio or protocols.

pub mod users;
pub mod verify;

pub use users::{
    Role, UserDb, UserEntry, UsersError, add_user, delete_user, set_password, validate_name,
};
pub use verify::{hash_password, verify};
