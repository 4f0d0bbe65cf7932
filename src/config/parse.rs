//! From YAML text to the raw config, reporting every shape error it can in one run.
//!
//! Two passes. The first reads the text into a `serde_yaml::Value` while writing down the line
//! of every key and refusing a key given twice in one mapping (with the YAML path and both
//! lines: serde_yaml alone reports a duplicated top-level key with neither). The second
//! deserializes each independent part (a top-level section, one listener, one route, one plan,
//! one pool, one tenant) on its own, so a typo in one tenant does not hide a typo in a listener.
//! Only when every part is well-formed is the whole file deserialized.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_yaml::{Mapping, Value};

use crate::config::errors::ConfigErrors;
use crate::config::raw;

/// Parses YAML text into the raw config, or every error found (YAML path, message, line).
pub fn parse(text: &str) -> Result<raw::RawConfig, ConfigErrors> {
    parse_salvaging(text).map_err(|(errors, _)| errors)
}

/// Like [`parse`], but when the only problems are unknown keys (typos) and duplicated keys, also
/// returns the config read without the unknown keys (and with the first of each duplicate), so
/// that its compile errors can be reported in the same run: a typo in `limits` does not hide an
/// unknown plan. Nothing is salvaged from any other kind of error.
pub fn parse_salvaging(
    text: &str,
) -> Result<raw::RawConfig, (ConfigErrors, Option<Box<raw::RawConfig>>)> {
    let lines = RefCell::new(Lines::default());
    let de = serde_yaml::Deserializer::from_str(text);
    let mut value = NodeSeed {
        path: String::new(),
        lines: &lines,
    }
    .deserialize(de)
    .map_err(|e| (ConfigErrors::single("", yaml_error(&e)), None))?;
    let lines = lines.into_inner();
    let mut errors = ConfigErrors::default();
    for d in &lines.duplicates {
        errors.push(
            d.path.clone(),
            format!(
                "duplicate key at line {} (first at line {})",
                d.line, d.first_line
            ),
        );
    }
    let Value::Mapping(top) = &value else {
        errors.push(
            "",
            "the config must be a YAML mapping (version: 1, listeners: ...)",
        );
        return Err((errors, None));
    };
    let salvage = check_parts(&mut errors, top, &lines);
    if !errors.is_empty() {
        let mut raw = None;
        if !salvage.other && salvage.unknown.iter().all(|p| remove_path(&mut value, p)) {
            raw = serde_yaml::from_value(value).ok().map(Box::new);
        }
        return Err((errors, raw));
    }
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = clean_path(&e.path().to_string());
        let message = located(&lines, &path, e.into_inner().to_string());
        (ConfigErrors::single(path, message), None)
    })
}

/// Removes the key at `path` (`tenants.acme.hsts`, `listeners[0].nme`) from `v`; false when the
/// path does not lead to a key of a mapping (names with dots in them, for instance).
fn remove_path(v: &mut Value, path: &str) -> bool {
    let mut segments = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        segments.push(Segment::Key(name));
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else {
                return false;
            };
            let Ok(i) = inner[..end].parse::<usize>() else {
                return false;
            };
            segments.push(Segment::Index(i));
            rest = &inner[end + 1..];
        }
    }
    let Some((Segment::Key(last), parents)) = segments.split_last() else {
        return false;
    };
    let mut at = v;
    for s in parents {
        let next = match (s, at) {
            (Segment::Key(k), Value::Mapping(m)) => m.get_mut(*k),
            (Segment::Index(i), Value::Sequence(items)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => at = n,
            None => return false,
        }
    }
    match at {
        Value::Mapping(m) => m.remove(*last).is_some(),
        _ => false,
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// What `check_parts` found: the paths of unknown keys, and whether anything else was wrong.
#[derive(Default)]
struct Salvage {
    unknown: Vec<String>,
    other: bool,
}

/// A YAML syntax error, with its line and column (`did not find expected key at line 4 column 3`).
fn yaml_error(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    if msg.contains("at line") {
        return msg;
    }
    match e.location() {
        Some(l) => format!("{msg} at line {} column {}", l.line(), l.column()),
        None => msg,
    }
}

fn clean_path(p: &str) -> String {
    if p == "." {
        String::new()
    } else {
        p.to_owned()
    }
}

/// Adds the line of `path` (or of its nearest parent with a known line) to a message.
fn located(lines: &Lines, path: &str, message: String) -> String {
    let mut p = path;
    loop {
        if let Some(line) = lines.by_path.get(p) {
            return format!("{message} (line {line})");
        }
        match p.rfind(['.', '[']) {
            Some(i) => p = &p[..i],
            None => return message,
        }
    }
}

/// Deserializes each independent part of the file on its own and pushes its first error.
fn check_parts(errors: &mut ConfigErrors, top: &Mapping, lines: &Lines) -> Salvage {
    let mut salvage = Salvage::default();
    const FIELDS: &[&str] = &[
        "version",
        "listeners",
        "admin",
        "limits",
        "tls",
        "tenancy",
        "token",
        "apikey",
        "signing",
        "plans",
        "upstreams",
        "routes",
        "tenants",
        "cluster",
        "access_log",
        "trusted_proxies",
        "usage",
        "dns",
    ];
    let mut part = |path: &str, v: &Value, f: fn(&Value) -> Result<(), PartError>| {
        if let Err(e) = f(v) {
            let full = match (path, e.path.as_str()) {
                (p, "") => p.to_owned(),
                (p, rest) if rest.starts_with('[') => format!("{p}{rest}"),
                (p, rest) => format!("{p}.{rest}"),
            };
            if e.message.starts_with("unknown field `") && !full.is_empty() {
                salvage.unknown.push(full.clone());
            } else {
                salvage.other = true;
            }
            let message = located(lines, &full, e.message);
            errors.push(full, message);
        }
    };
    let mut unknown = Vec::new();
    for (k, v) in top {
        let Some(name) = k.as_str() else {
            part("", k, |_| Err(PartError::new("keys must be strings")));
            continue;
        };
        match name {
            "version" => part(name, v, check::<u32>),
            "listeners" => each_element(v, name, &mut part, check::<raw::RawListener>),
            "admin" => part(name, v, check::<Option<raw::RawAdmin>>),
            "limits" => part(name, v, check::<raw::RawLimits>),
            "tls" => part(name, v, check::<Option<raw::RawTls>>),
            "tenancy" => part(name, v, check::<raw::RawTenancy>),
            "token" => part(name, v, check::<Option<raw::RawToken>>),
            "apikey" => part(name, v, check::<Option<raw::RawApiKey>>),
            "signing" => part(name, v, check::<raw::RawSigning>),
            "plans" => each_entry(v, name, &mut part, check::<raw::RawPlan>),
            "upstreams" => each_entry(v, name, &mut part, check::<raw::RawUpstream>),
            "routes" => each_element(v, name, &mut part, check::<raw::RawRoute>),
            "tenants" => each_entry(v, name, &mut part, check::<raw::RawTenant>),
            "cluster" => part(name, v, check::<Option<raw::RawCluster>>),
            "access_log" => part(name, v, check::<bool>),
            "trusted_proxies" => part(name, v, check::<Vec<String>>),
            "usage" => part(name, v, check::<Option<raw::RawUsage>>),
            "dns" => part(name, v, check::<Option<raw::RawDns>>),
            other => unknown.push(other.to_owned()),
        }
    }
    let expected = FIELDS
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ");
    for other in unknown {
        salvage.unknown.push(other.clone());
        let message = located(
            lines,
            &other,
            format!("unknown field `{other}`, expected one of {expected}"),
        );
        errors.push(other, message);
    }
    for required in ["version", "signing"] {
        if !top.contains_key(required) {
            errors.push("", format!("missing field `{required}`"));
            salvage.other = true;
        }
    }
    salvage
}

fn each_element(
    v: &Value,
    name: &str,
    part: &mut impl FnMut(&str, &Value, fn(&Value) -> Result<(), PartError>),
    f: fn(&Value) -> Result<(), PartError>,
) {
    match v {
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                part(&format!("{name}[{i}]"), item, f);
            }
        }
        Value::Null => {}
        other => part(name, other, check::<Vec<()>>),
    }
}

fn each_entry(
    v: &Value,
    name: &str,
    part: &mut impl FnMut(&str, &Value, fn(&Value) -> Result<(), PartError>),
    f: fn(&Value) -> Result<(), PartError>,
) {
    match v {
        Value::Mapping(entries) => {
            for (k, item) in entries {
                match k.as_str() {
                    Some(key) => part(&format!("{name}.{key}"), item, f),
                    None => part(name, k, |_| Err(PartError::new("names must be strings"))),
                }
            }
        }
        Value::Null => {}
        other => part(name, other, check::<std::collections::BTreeMap<String, ()>>),
    }
}

struct PartError {
    path: String,
    message: String,
}

impl PartError {
    fn new(message: &str) -> Self {
        Self {
            path: String::new(),
            message: message.to_owned(),
        }
    }
}

fn check<T: DeserializeOwned>(v: &Value) -> Result<(), PartError> {
    serde_path_to_error::deserialize::<_, T>(v)
        .map(drop)
        .map_err(|e| PartError {
            path: clean_path(&e.path().to_string()),
            message: e.into_inner().to_string(),
        })
}

// === The first pass: a Value, the line of every key, duplicates ===

#[derive(Default)]
struct Lines {
    by_path: HashMap<String, usize>,
    duplicates: Vec<Duplicate>,
    /// The key the last key visitor saw (the visitor fails on purpose so that serde_yaml tells
    /// where the key is; the key itself is passed back here).
    pending_key: Option<Value>,
}

struct Duplicate {
    path: String,
    line: usize,
    first_line: usize,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

struct NodeSeed<'a> {
    path: String,
    lines: &'a RefCell<Lines>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(NodeVisitor(self))
    }
}

struct NodeVisitor<'a>(NodeSeed<'a>);

impl<'de> Visitor<'de> for NodeVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.0.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(NodeSeed {
            path: format!("{}[{}]", self.0.path, out.len()),
            lines: self.0.lines,
        })? {
            out.push(v);
        }
        Ok(Value::Sequence(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Mapping::new();
        while let Some((key, line)) = map.next_key_seed(KeySeed(self.0.lines))? {
            let name = match &key {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => "?".to_owned(),
            };
            let path = join(&self.0.path, &name);
            {
                let mut lines = self.0.lines.borrow_mut();
                if let Some(line) = line {
                    // A list element or map entry is found at the line of its first key.
                    lines.by_path.entry(self.0.path.clone()).or_insert(line);
                }
                if out.contains_key(&key) {
                    let first_line = lines.by_path.get(&path).copied().unwrap_or(0);
                    lines.duplicates.push(Duplicate {
                        path: path.clone(),
                        line: line.unwrap_or(0),
                        first_line,
                    });
                } else if let Some(line) = line {
                    lines.by_path.insert(path.clone(), line);
                }
            }
            let value = map.next_value_seed(NodeSeed {
                path,
                lines: self.0.lines,
            })?;
            if !out.contains_key(&key) {
                out.insert(key, value);
            }
        }
        Ok(Value::Mapping(out))
    }
}

/// Reads a key and where it is: `(key, line)`.
struct KeySeed<'a>(&'a RefCell<Lines>);

/// The message of the deliberate error that carries a key's position out of serde_yaml.
const KEY_MARK: &str = "\u{0}key position";

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = (Value, Option<usize>);

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        // serde_yaml only tells positions through errors: the key visitor records the key and
        // fails, and the error brings the line back. The key's scalar is consumed either way.
        match d.deserialize_any(KeyVisitor(self.0)) {
            Ok(v) => Ok((v, None)),
            Err(e) => {
                let key = self.0.borrow_mut().pending_key.take();
                match key {
                    Some(k) => Ok((k, line_of(&e.to_string()))),
                    None => Err(e),
                }
            }
        }
    }
}

/// The line from serde_yaml's `... at line N column M` (D::Error is generic, so its location is
/// read from the message). serde_yaml leaves the very start of the document unmarked: line 1.
fn line_of(message: &str) -> Option<usize> {
    if message == KEY_MARK {
        return Some(1);
    }
    let rest = &message[message.rfind("at line ")? + "at line ".len()..];
    rest.split(' ').next()?.parse().ok()
}

struct KeyVisitor<'a>(&'a RefCell<Lines>);

impl KeyVisitor<'_> {
    fn found<E: de::Error>(self, key: Value) -> Result<Value, E> {
        self.0.borrow_mut().pending_key = Some(key);
        Err(E::custom(KEY_MARK))
    }
}

impl<'de> Visitor<'de> for KeyVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.found(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.found(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.found(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.found(Value::Number(v.into()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.found(Value::String(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.found(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const BASE: &str =
        "version: 1\nsigning:\n  active_key: k1\n  keys: [{ id: k1, secret_file: s }]\n";

    #[test]
    fn a_duplicated_top_level_key_has_its_path_and_lines() {
        let text = format!("{BASE}version: 1\n");
        assert_eq!(
            errors(&text),
            vec!["version: duplicate key at line 5 (first at line 1)"]
        );
    }

    #[test]
    fn a_duplicated_nested_key_has_its_path_and_lines() {
        let text = format!("{BASE}tenants:\n  acme:\n    plan: free\n    plan: gold\n");
        assert_eq!(
            errors(&text),
            vec!["tenants.acme.plan: duplicate key at line 8 (first at line 7)"]
        );
    }

    #[test]
    fn independent_shape_errors_are_all_reported() {
        let text = format!(
            "{BASE}listeners:\n  - {{ name: a, bind: x, nme: y }}\ntenants:\n  acme: {{ plan: free, hsts: [] }}\nlimits: {{ max_conection: 3 }}\n"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("listeners[0].nme: unknown field `nme`"),
            "{errs:?}"
        );
        assert!(errs[0].ends_with("(line 6)"), "{errs:?}");
        assert!(
            errs[1].starts_with("tenants.acme.hsts: unknown field `hsts`"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("limits.max_conection: unknown field"),
            "{errs:?}"
        );
        assert!(errs[2].ends_with("(line 9)"), "{errs:?}");
    }

    #[test]
    fn syntax_errors_and_odd_documents_do_not_panic() {
        for text in [
            "",
            "- a\n- b\n",
            "version: [\n",
            "? [a]\n: b\n",
            "{1: 2}",
            "version: 1\nsigning: !tag x\n",
            "a: &x [*x]\n",
            "version: 1\n\u{0}",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn unknown_keys_are_salvaged_other_errors_are_not() {
        let text = format!(
            "{BASE}tenants:\n  acme: {{ plan: free, hsts: [] }}\nlimits: {{ max_conection: 3 }}\n"
        );
        let Err((errors, Some(raw))) = parse_salvaging(&text) else {
            panic!("expected errors and a salvaged config");
        };
        assert_eq!(errors.0.len(), 2);
        assert_eq!(raw.tenants["acme"].plan, "free");
        let text = format!("{BASE}tenants:\n  acme: {{ plan: [free], hsts: [] }}\n");
        assert!(matches!(parse_salvaging(&text), Err((_, None))));
        let text = "signing: { active_key: k1, keys: [] }\ncolour: blue\n";
        assert!(
            matches!(parse_salvaging(text), Err((_, None))),
            "version is missing"
        );
    }

    #[test]
    fn a_good_file_parses() {
        assert!(parse(BASE).is_ok(), "{:?}", errors(BASE));
    }
}
