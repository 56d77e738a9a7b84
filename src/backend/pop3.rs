//! TODO (being written): pop3::Store over maildir scan + lock.
