//! TODO (being written): smtp::Backend over maildir delivery.
