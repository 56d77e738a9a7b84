//! TODO (being written): durable delivery into Maildir (tmp -> fsync -> link into new/ -> fsync new/).
