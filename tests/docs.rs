//! Docs that match the code: every configuration key the code accepts has an
//! entry in maildird.toml(5) and appears in contrib/maildird.toml, every entry
//! of the page is a real key, and the README names only real keys.
//!
//! The keys come from the code, not from a list kept here: every table refuses
//! unknown keys, and its refusal names the keys it knows. The tests feed each
//! table (found the same way, starting at the top level) an unknown key and
//! read that list: serde's "unknown field `x`, expected one of `a`, `b`" for
//! the config structs, "unknown setting \"x\" (a, b)" for filters that check
//! their settings by hand. Filter tables are found from the filter registry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use maildird::config::Config;
use maildird::filter::{Registry, Side};

/// A key no table has.
const PROBE: &str = "zz_probe";

/// Table path ("" for the top level, `limits`, `listener.keepalive`,
/// `filter`, `filter.log`, `filter.exec.NAME`) -> its keys. A key that is
/// itself a table (`limits` at the top level, `keepalive` in `listener`) has
/// its own entry: see `subtable`.
type Keys = BTreeMap<String, BTreeSet<String>>;

/// The path of `table`'s key `name` if that key is a table of its own.
fn subtable(keys: &Keys, table: &str, name: &str) -> Option<String> {
    let path = if table.is_empty() {
        name.to_string()
    } else {
        format!("{table}.{name}")
    };
    // A table of named tables (`[milter.NAME]`) is documented as `NAME`.
    let named = format!("{path}.NAME");
    if keys.contains_key(&named) {
        return Some(named);
    }
    keys.contains_key(&path).then_some(path)
}

/// The keys an unknown-key refusal names, or None if `msg` is not one.
fn known_keys(msg: &str) -> Option<BTreeSet<String>> {
    let serde = format!("unknown field `{PROBE}`");
    let by_hand = format!("unknown setting \"{PROBE}\" (");
    if let Some(i) = msg.find(&serde) {
        let rest = &msg[i + serde.len()..];
        let rest = rest.lines().next().unwrap_or("");
        // "`a`, `b`" / "`a` or `b`" / "there are no fields".
        return Some(
            rest.split('`')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect(),
        );
    }
    let i = msg.find(&by_hand)?;
    let rest = &msg[i + by_hand.len()..];
    let list = &rest[..rest.find(')')?];
    Some(list.split(',').map(|k| k.trim().to_string()).collect())
}

/// The config error for `text`, if any.
fn config_error(text: &str) -> Option<String> {
    Config::parse(text, "probe").err().map(|e| e.to_string())
}

/// A path of keys into the config, each with "is an array of tables".
type KeyPath = Vec<(String, bool)>;

/// `path` (keys, each maybe an array of tables) holding `inner`, as one line
/// of TOML: [("listener", true), ("keepalive", false)] -> `listener = [{
/// keepalive = INNER }]`.
fn nest(path: &[(String, bool)], inner: &str) -> String {
    let mut value = inner.to_string();
    for (i, (key, array)) in path.iter().enumerate().rev() {
        if *array {
            value = format!("[{value}]");
        }
        value = if i == 0 {
            format!("{key} = {value}")
        } else {
            format!("{{ {key} = {value} }}")
        };
    }
    value
}

/// Walk the config structs from the top level: a key whose value refuses an
/// unknown key is a table (or an array of tables) and is walked in turn.
/// `filter` takes any table (its contents are checked by the filters) and is
/// returned apart.
fn config_keys() -> (Keys, bool) {
    let mut keys = Keys::new();
    let mut filter_seen = false;
    let probe = format!("{{ {PROBE} = 1 }}");
    let top = config_error(&format!("{PROBE} = 1\n")).expect("an unknown top-level key is refused");
    let mut todo: Vec<(KeyPath, BTreeSet<String>)> = vec![(
        Vec::new(),
        known_keys(&top).unwrap_or_else(|| panic!("not an unknown-key refusal: {top}")),
    )];
    while let Some((path, names)) = todo.pop() {
        let dotted: Vec<&str> = path.iter().map(|(k, _)| k.as_str()).collect();
        keys.insert(dotted.join("."), names.clone());
        for name in names {
            let mut child = path.clone();
            child.push((name.clone(), false));
            let as_table = config_error(&nest(&child, &probe));
            if path.is_empty() && name == "filter" {
                assert_eq!(as_table, None, "[filter] takes any filter's table");
                filter_seen = true;
                continue;
            }
            if let Some(k) = as_table.as_deref().and_then(known_keys) {
                todo.push((child, k));
                continue;
            }
            // A table of named tables: `milter = { NAME = { probe } }`.
            let mut named = child.clone();
            named.push(("NAME".into(), false));
            if let Some(k) = config_error(&nest(&named, &probe))
                .as_deref()
                .and_then(known_keys)
            {
                todo.push((named, k));
                continue;
            }
            child.last_mut().expect("child").1 = true;
            if let Some(k) = config_error(&nest(&child, &probe))
                .as_deref()
                .and_then(known_keys)
            {
                todo.push((child, k));
            }
        }
    }
    (keys, filter_seen)
}

/// Each built-in filter's `[filter.NAME]` keys, from its refusal of an unknown
/// one (on whichever side the filter runs). `exec` is listed as `exec.NAME`.
fn filter_keys() -> Keys {
    let registry = Registry::builtin();
    let mut keys = Keys::new();
    for name in registry.names() {
        let (table, listed) = if name == "exec" {
            ("exec.NAME".to_string(), "exec.probe".to_string())
        } else {
            (name.to_string(), name.to_string())
        };
        let section = &listed;
        let cfg = Config::parse(&format!("[filter.{section}]\n{PROBE} = 1\n"), "probe")
            .expect("filter tables are checked by the filters");
        let refusals: Vec<String> = [Side::Server, Side::Client]
            .into_iter()
            .filter_map(|side| {
                registry
                    .build(&cfg, std::slice::from_ref(&listed), side)
                    .err()
                    .map(|e| e.to_string())
            })
            .collect();
        let known = refusals
            .iter()
            .find_map(|m| known_keys(m))
            .unwrap_or_else(|| {
                panic!(
                    "filter {name:?} does not refuse an unknown key in [filter.{section}] \
                     (maildird.toml(5): unknown keys are errors): {refusals:?}"
                )
            });
        keys.insert(format!("filter.{table}"), known);
    }
    let names = keys
        .keys()
        .map(|t| t["filter.".len()..].to_string())
        .collect();
    keys.insert("filter".into(), names);
    keys
}

/// Every table the code accepts, with its keys.
fn code_keys() -> Keys {
    let (mut keys, filter_seen) = config_keys();
    assert!(filter_seen, "no [filter] table in the config");
    keys.extend(filter_keys());
    // Sanity: the walk found what it should (a broken probe must not pass
    // silently by finding nothing).
    for (table, key) in [
        ("", "hostname"),
        ("limits", "max_message_size"),
        ("listener", "filters"),
        ("listener.keepalive", "idle"),
        ("filter.exec.NAME", "command"),
    ] {
        assert!(
            keys.get(table).is_some_and(|k| k.contains(key)),
            "{table}.{key} not found: {keys:#?}"
        );
    }
    keys
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// mdoc text without its macros: `.Ss [filter.exec. Ns Ar name Ns \&]` ->
/// `[filter.exec.name]`.
fn heading_text(args: &str) -> String {
    let mut out = String::new();
    let mut space = false;
    for word in args.split_whitespace() {
        match word {
            "Ns" => space = false,
            "Ar" | "Cm" | "No" | "Ql" => {}
            w => {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(&w.replace("\\&", ""));
                space = true;
            }
        }
    }
    out
}

/// The page's typed entries (`.It Cm KEY Pq Vt TYPE`) under each `.Sh` or
/// `.Ss` heading: heading -> (key -> line number).
fn page_entries(page: &str) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut entries: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut heading = String::new();
    for (i, line) in page.lines().enumerate() {
        if let Some(h) = line
            .strip_prefix(".Sh ")
            .or_else(|| line.strip_prefix(".Ss "))
        {
            heading = heading_text(h);
            entries.entry(heading.clone()).or_default();
        } else if let Some(rest) = line.strip_prefix(".It Cm ") {
            if let Some((key, _)) = rest.split_once(" Pq Vt ") {
                entries
                    .entry(heading.clone())
                    .or_default()
                    .insert(key.trim().to_string(), i + 1);
            }
        }
    }
    entries
}

/// The heading that documents `table` in maildird.toml(5): `TOP LEVEL`, the
/// table's name in capitals (`LIMITS`, plural `LISTENERS`), or `[filter.NAME]`.
fn heading_for<'a>(table: &str, headings: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let want: Vec<String> = match table {
        "" => vec!["TOP LEVEL".into()],
        "filter" => vec!["FILTER SETTINGS".into()],
        // The client side of `tls` is documented with the other TLS settings.
        "filter.tls" => vec!["TLS client".into()],
        t if t.starts_with("filter.") || t.ends_with(".NAME") => {
            vec![format!("[{}]", t.to_lowercase())]
        }
        t => vec![t.to_uppercase(), format!("{}S", t.to_uppercase())],
    };
    headings
        .into_iter()
        .find(|h| want.iter().any(|w| w.eq_ignore_ascii_case(h)))
}

/// `listener.keepalive` is documented as "the keys and defaults of KEEPALIVE".
fn documented_by_reference(keys: &Keys, table: &str) -> bool {
    table == "listener.keepalive" && keys.get(table) == keys.get("keepalive")
}

#[test]
fn every_config_key_has_an_entry_in_maildird_toml_5_and_every_entry_is_a_key() {
    let keys = code_keys();
    let entries = page_entries(&read("man/maildird.toml.5"));
    let mut problems = Vec::new();
    let mut used_headings = BTreeSet::new();
    for (table, names) in &keys {
        if documented_by_reference(&keys, table) {
            continue;
        }
        let Some(heading) = heading_for(table, entries.keys()) else {
            problems.push(format!(
                "table {table:?} ({names:?}) has no section with entries in man/maildird.toml.5"
            ));
            continue;
        };
        used_headings.insert(heading.clone());
        let documented = &entries[heading];
        for name in names {
            // A table is documented by an entry or by a section of its own.
            let own_section = subtable(&keys, table, name).is_some_and(|sub| {
                !documented_by_reference(&keys, &sub) && heading_for(&sub, entries.keys()).is_some()
            });
            if !documented.contains_key(name) && !own_section {
                problems.push(format!(
                    "{table:?} key {name:?}: no `.It Cm {name} Pq Vt ...` entry under {heading:?}"
                ));
            }
        }
        for (entry, line) in documented {
            if !names.contains(entry) {
                problems.push(format!(
                    "man/maildird.toml.5:{line}: entry {entry:?} under {heading:?} is not a key of {table:?} (known: {names:?})"
                ));
            }
        }
    }
    for (heading, documented) in &entries {
        if !used_headings.contains(heading) {
            for (entry, line) in documented {
                problems.push(format!(
                    "man/maildird.toml.5:{line}: entry {entry:?} under {heading:?}, a section that documents no table"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Keys (commented or not) in contrib/maildird.toml, by table: `#key = ...`
/// lines (a `#` directly before the key; prose comments have a space) under
/// `[table]`/`[[table]]` headers, commented or not.
fn example_keys(text: &str) -> Keys {
    let mut keys = Keys::new();
    let mut table = String::new();
    for line in text.lines() {
        let l = line.strip_prefix('#').unwrap_or(line);
        if l.starts_with('[') {
            let name = l.trim().trim_start_matches('[').trim_end_matches(']');
            table = match name.split_once('.') {
                _ if name.starts_with("filter.exec.") => "filter.exec.NAME".into(),
                Some((t @ ("milter" | "exec"), _)) => format!("{t}.NAME"),
                _ => name.to_string(),
            };
            keys.entry(table.clone()).or_default();
            continue;
        }
        let Some((key, _)) = l.split_once('=') else {
            continue;
        };
        let key = key.trim_end();
        if !key.is_empty()
            && key == l[..key.len()].trim_start()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            keys.entry(table.clone())
                .or_default()
                .insert(key.to_string());
        }
    }
    keys
}

#[test]
fn every_config_key_appears_in_the_example_config() {
    let keys = code_keys();
    let example = example_keys(&read("contrib/maildird.toml"));
    let mut problems = Vec::new();
    for (table, names) in &keys {
        if documented_by_reference(&keys, table) {
            continue;
        }
        for name in names {
            let line = example.get(table).is_some_and(|k| k.contains(name));
            // A table: its own `[table]` header (or `[table.x]`, for `filter`).
            let header = subtable(&keys, table, name).is_some_and(|sub| {
                example
                    .keys()
                    .any(|t| *t == sub || t.starts_with(&format!("{sub}.")))
            });
            if !line && !header {
                problems.push(format!(
                    "contrib/maildird.toml: no `{name} = ...` (commented or not) in [{table}]"
                ));
            }
        }
    }
    for (table, names) in &example {
        for name in names {
            if !keys.get(table).is_some_and(|k| k.contains(name)) {
                problems.push(format!(
                    "contrib/maildird.toml: [{table}] {name} is not a key the code accepts"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The README's backticked config references: `[table]`, `[table] key`,
/// `[table] key = ...`, `table.key` and `key = ...`.
#[test]
fn config_keys_named_in_the_readme_exist() {
    let keys = code_keys();
    let any_key = |k: &str| keys.values().any(|names| names.contains(k));
    let table_of = |t: &str| {
        let t = if t.starts_with("filter.exec.") {
            "filter.exec.NAME"
        } else {
            t
        };
        keys.get(t)
    };
    let readme = read("README.md");
    let mut checked = 0;
    let mut problems = Vec::new();
    for span in readme.split('`').skip(1).step_by(2) {
        let is_name = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.".contains(&b))
        };
        if let Some(rest) = span.strip_prefix('[') {
            // `[table]`, `[table] key`, `[table] key = value`.
            let Some((table, after)) = rest.trim_start_matches('[').split_once(']') else {
                continue;
            };
            if table == "filter.NAME" || !is_name(table) {
                continue;
            }
            checked += 1;
            let Some(names) = table_of(table) else {
                problems.push(format!("README: `{span}`: no table [{table}]"));
                continue;
            };
            let key = after
                .trim_start_matches(']')
                .split('=')
                .next()
                .unwrap_or("")
                .trim();
            if !key.is_empty() && !names.contains(key) {
                problems.push(format!("README: `{span}`: [{table}] has no key {key:?}"));
            }
        } else if let Some((key, _)) = span.split_once(" = ") {
            // `key = value`.
            if is_name(key) && !key.contains('.') {
                checked += 1;
                if !any_key(key) {
                    problems.push(format!("README: `{span}`: no key {key:?}"));
                }
            }
        } else if let Some((table, key)) = span.rsplit_once('.') {
            // `table.key`, when `table` is a table (not `mod.rs`).
            if is_name(span) {
                if let Some(names) = table_of(table) {
                    checked += 1;
                    if !names.contains(key) {
                        problems.push(format!("README: `{span}`: [{table}] has no key {key:?}"));
                    }
                }
            }
        }
    }
    assert!(
        checked > 5,
        "README: only {checked} config references found"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The probe itself: refusals in both formats give their key lists.
#[test]
fn known_keys_reads_both_refusal_formats() {
    let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        known_keys("t:1: unknown field `zz_probe`, expected one of `a`, `b_c`"),
        Some(k(&["a", "b_c"]))
    );
    assert_eq!(
        known_keys("unknown field `zz_probe`, expected `content`"),
        Some(k(&["content"]))
    );
    assert_eq!(
        known_keys("unknown field `zz_probe`, expected `a` or `b`"),
        Some(k(&["a", "b"]))
    );
    assert_eq!(
        known_keys("filter \"proxy\": unknown setting \"zz_probe\" (trusted, timeout)"),
        Some(k(&["trusted", "timeout"]))
    );
    assert_eq!(known_keys("invalid type: map, expected a string"), None);
    assert_eq!(
        nest(
            &[("listener".into(), true), ("keepalive".into(), false)],
            "{ x = 1 }"
        ),
        "listener = [{ keepalive = { x = 1 } }]"
    );
}
