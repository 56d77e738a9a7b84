//! TODO (being written): the `tls` transport filter.

use super::Factory;

/// The factory registered under `tls`.
pub fn factory() -> Factory {
    std::sync::Arc::new(|_ctx| Err("the tls filter is not built yet".to_string()))
}
