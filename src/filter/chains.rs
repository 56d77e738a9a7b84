//! Building the filter chains of a config: the registry of built-in filters
//! (with the daemon's reloadable certificate for `tls`) and one chain per
//! listener, checked. Used by the daemon, `check-config` and `tunnel`.

use std::collections::HashMap;
use std::sync::Arc;

use super::tls::TlsServer;
use super::{ChainError, FilterChain, Registry};
use crate::config::Config;

/// The `[tls]` certificate and key, if configured (errors name the file: exit 2).
pub fn load_tls(config: &Config) -> Result<Option<Arc<TlsServer>>, String> {
    config.tls.as_ref().map(TlsServer::load).transpose()
}

/// The built-in filters, with `tls` sharing the daemon's reloadable certificate.
pub fn registry(tls: Option<&Arc<TlsServer>>) -> Registry {
    let mut registry = Registry::builtin();
    if let Some(t) = tls {
        registry.register("tls", crate::filter::tls::server_factory(t.clone()));
    }
    registry
}

/// Build every listener's filter chain (unknown names, bad settings,
/// impossible orders and STARTTLS over a filter that may hold input back are
/// config errors). `check-config`, start-up and SIGHUP reload all come here.
pub fn build(
    config: &Config,
    registry: &Registry,
) -> Result<HashMap<String, FilterChain>, ChainError> {
    config
        .listeners
        .iter()
        .enumerate()
        .map(|(index, l)| {
            let chain = registry
                .build(config, &l.filters, crate::filter::Side::Server)
                .map_err(|e| {
                    let at = settings_at(config, &e).or_else(|| config.listener_filters_at(index));
                    ChainError::Listener {
                        listener: l.name.clone(),
                        error: Box::new(e),
                    }
                    .at(at)
                })?;
            if l.starttls {
                chain
                    .check_starttls(&l.name, &l.filters)
                    .map_err(|e| e.at(config.listener_filters_at(index)))?;
            }
            Ok((l.name.clone(), chain))
        })
        .collect()
}

/// For a filter's refused settings: the `file:line` of its `[filter.*]` table.
pub fn settings_at(config: &Config, error: &ChainError) -> Option<String> {
    match error {
        ChainError::Settings { name, .. } => config.filter_table_at(name),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: &str =
        "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[filter.exec.rot]\ncommand = [\"cat\"]\n";

    fn chains(listeners: &str) -> Result<HashMap<String, FilterChain>, String> {
        let cfg = Config::parse(&format!("{TLS}{listeners}"), "t").map_err(|e| e.to_string())?;
        build(&cfg, &registry(None)).map_err(|e| e.to_string())
    }

    /// `check-config`, start-up and reload share this check: STARTTLS/STLS over
    /// a filter that may hold input back is a config error naming both.
    #[test]
    fn starttls_over_a_buffering_filter_is_a_config_error() {
        for (proto, filters, bad) in [
            ("smtp", "[\"zlib\"]", Some("zlib")),
            ("pop3", "[\"log\", \"exec.rot\"]", Some("exec.rot")),
            ("submission", "[\"proxy\", \"zlib\"]", Some("zlib")),
            ("smtp", "[\"proxy\", \"log\"]", None),
            ("pop3", "[]", None),
        ] {
            let l = format!(
                "[[listener]]\nname = \"l\"\nprotocol = \"{proto}\"\nfilters = {filters}\nstarttls = true\n"
            );
            match bad {
                None => assert!(chains(&l).is_ok(), "{l}"),
                Some(f) => {
                    let e = chains(&l).err().unwrap_or_default();
                    // The file and line of the listener's `filters` come first.
                    assert!(
                        e.starts_with(&format!(
                            "t:9: listener \"l\": starttls = true cannot be used with filter \"{f}\""
                        )),
                        "{e}"
                    );
                    assert!(e.contains("implicit TLS"), "{e}");
                }
            }
            // The same filters without STARTTLS are fine.
            let plain = l.replace("starttls = true\n", "");
            assert!(chains(&plain).is_ok(), "{plain}");
        }
    }

    /// maildird.toml(5), FILTER SETTINGS: `log` logging content below `zlib`
    /// (or `tls`) is refused by `check-config`, start-up and reload, naming the
    /// listener; counting bytes there is allowed.
    #[test]
    fn log_content_below_zlib_is_a_config_error() {
        let l = "[[listener]]\nname = \"l\"\nprotocol = \"pop3\"\nfilters = [\"log\", \"zlib\"]\n";
        assert!(chains(l).is_ok());
        let e = chains(&format!("[filter.log]\ncontent = true\n{l}"))
            .err()
            .unwrap_or_default();
        assert!(
            e.starts_with("t:11: listener \"l\": filter \"log\" with [filter.log] content = true is listed before \"zlib\""),
            "{e}"
        );
        let above = l.replace("[\"log\", \"zlib\"]", "[\"zlib\", \"log\"]");
        assert!(chains(&format!("[filter.log]\ncontent = true\n{above}")).is_ok());
    }

    /// Unknown names point at the listener's `filters` line; refused settings
    /// at the `[filter.*]` table that holds them.
    #[test]
    fn chain_errors_name_the_file_and_line() {
        let l = |filters: &str| {
            format!(
                "[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\n\n[[listener]]\nname = \"b\"\nprotocol = \"pop3\"\nfilters = {filters}\n"
            )
        };
        let e = chains(&l("[\"nosuch\"]")).unwrap_err();
        assert!(
            e.starts_with("t:13: listener \"b\": unknown filter \"nosuch\""),
            "{e}"
        );
        let e = chains(&format!("{}[filter.zlib]\nlevel = 12\n", l("[\"zlib\"]"))).unwrap_err();
        assert!(
            e.starts_with("t:14: listener \"b\": filter \"zlib\": level must be 0-9"),
            "{e}"
        );
    }
}
