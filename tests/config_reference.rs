//! `docs/configuration.md` is the contract: every key the config types accept is documented
//! there, and every key documented there exists in the code.

use std::collections::BTreeSet;
use std::path::Path;

/// The first code span of each table row: `| \`plans.<plan>.rate\` | ...` → `plans.*.rate`.
fn documented_keys(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(|k| {
            let mut out = String::new();
            let mut in_name = false;
            for c in k.chars() {
                match c {
                    '<' => {
                        in_name = true;
                        out.push('*');
                    }
                    '>' => in_name = false,
                    _ if in_name => {}
                    _ => out.push(c),
                }
            }
            out
        })
        .collect()
}

#[test]
fn every_config_key_is_in_the_reference_and_every_documented_key_exists() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let documented = documented_keys(&doc);
    let in_code = tenant_gateway::config::keys::all_keys();
    let undocumented: Vec<_> = in_code.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&in_code).collect();
    let mut msg = String::new();
    for k in &undocumented {
        msg.push_str(&format!(
            "key `{k}` is accepted by src/config/raw.rs but has no row in docs/configuration.md \
             (add `| \\`{}\\` | type | req. | default | reload | example |`)\n",
            k.replace('*', "<name>")
        ));
    }
    for k in &unknown {
        msg.push_str(&format!(
            "docs/configuration.md documents `{k}`, which src/config/raw.rs does not accept\n"
        ));
    }
    assert!(msg.is_empty(), "{msg}");
    assert!(
        in_code.len() > 100,
        "the key walk found too little: {in_code:?}"
    );
}

#[test]
fn the_doc_parser_reads_names_and_lists() {
    let doc = "| `plans.<plan>.rate.burst` | int |\n| `listeners[].name` | x |\nnot a row `x`\n";
    let keys = documented_keys(doc);
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        vec![
            "listeners[].name".to_owned(),
            "plans.*.rate.burst".to_owned()
        ]
    );
}

/// The default column of `key`'s row: its first code span (`5000`, `reject`, `true`).
fn documented_default(doc: &str, key: &str) -> Option<String> {
    let row = doc
        .lines()
        .find(|l| l.starts_with(&format!("| `{key}` |")))?;
    let cell = row.split(" | ").nth(3)?;
    let start = cell.find('`')? + 1;
    let end = start + cell[start..].find('`')?;
    Some(cell[start..end].to_owned())
}

/// The defaults the reference shows for `limits` and `upstreams.<pool>.health` are the ones the
/// code fills in.
#[test]
fn documented_defaults_of_limits_and_health_match_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let raw = tenant_gateway::config::parse(
        "version: 1\nsigning: { active_key: k, keys: [] }\nupstreams: { p: { endpoints: [] } }\n",
    )
    .expect("minimal config");
    let limits = serde_json::to_value(&raw.limits).expect("limits");
    let health = serde_json::to_value(&raw.upstreams["p"].health).expect("health");
    let mut wrong = Vec::new();
    for (prefix, values) in [("limits", &limits), ("upstreams.<pool>.health", &health)] {
        let map = values.as_object().expect("object");
        assert!(map.len() > 3, "{values}");
        for (k, v) in map {
            let key = format!("{prefix}.{k}");
            let code = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match documented_default(&doc, &key) {
                Some(d) if d == code => {}
                other => wrong.push(format!(
                    "{key}: the code's default is {code}, the doc says {other:?}"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
