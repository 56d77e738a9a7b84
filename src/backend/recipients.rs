//! TODO (being written): recipient resolution: domains, delimiter, aliases, postmaster.
use std::path::Path;

#[derive(Debug, Default)]
pub struct Aliases {}

impl Aliases {
    pub fn load(path: &Path) -> Result<Aliases, String> {
        let _ = path;
        Ok(Aliases::default())
    }
}
