//! TODO: composition root.
