//! Overrides of single keys: `PORTCULLIS_SECTION__KEY=value` environment variables and
//! `--set section.key=value` flags. Values are read as YAML scalars or flow collections
//! (`8481`, `true`, `[a, b]`); keys are checked against the configuration's own fields.

use serde_json::Value;

use super::{Config, ConfigProblem, problem};

/// One override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Where it came from, for messages (`--set a.b` or `PORTCULLIS_A__B`).
    pub source: String,
    /// Key path, e.g. `["auth", "jwks_url"]` or `["upstreams", "0", "address"]`.
    pub path: Vec<String>,
    /// The value as written.
    pub value: String,
}

impl Override {
    /// Parses `a.b.c=value` (a `--set` flag).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}` is not of the form `key.path=value`"))?;
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(format!("`{key}` is not a key path such as `ops.address`"));
        }
        Ok(Self {
            source: format!("--set {key}"),
            path: key.split('.').map(str::to_owned).collect(),
            value: value.to_owned(),
        })
    }

    /// `PORTCULLIS_A__B=value` → path `a.b`. Variables without a `__` section separator or
    /// outside the prefix are not overrides (`PORTCULLIS_POLICY_DIR` is a flag's variable);
    /// a single-level key such as `threads` is written `PORTCULLIS_THREADS` and is also
    /// taken when it names a top-level key.
    pub fn from_env(name: &str, value: &str) -> Option<Self> {
        let rest = name.strip_prefix("PORTCULLIS_")?;
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return None;
        }
        if path.len() == 1 && !TOP_LEVEL_SCALARS.contains(&path.first()?.as_str()) {
            return None;
        }
        Some(Self {
            source: name.to_owned(),
            path,
            value: value.to_owned(),
        })
    }
}

/// Top-level keys that take a single value, so `PORTCULLIS_<KEY>` can set them.
const TOP_LEVEL_SCALARS: &[&str] = &["threads", "data_dir"];

/// Applies the overrides. One that names no key is reported and left out; when the result
/// does not fit the configuration's types, that is reported naming every override applied,
/// and the configuration stays as it was.
pub(super) fn apply(config: Config, overrides: &[Override]) -> (Config, Vec<ConfigProblem>) {
    let mut tree = match serde_json::to_value(&config) {
        Ok(t) => t,
        Err(e) => {
            return (
                config,
                vec![problem("overrides", format!("cannot apply: {e}"))],
            );
        }
    };
    let mut problems = Vec::new();
    // Sections the overrides brought into being (absent optional ones): any key may be set
    // below them here, and deserialisation checks those keys.
    let mut created: Vec<Vec<String>> = Vec::new();
    let mut applied: Vec<&str> = Vec::new();
    for o in overrides {
        let value: Value = match serde_saphyr::from_str(&o.value) {
            Ok(v) => v,
            Err(_) => Value::String(o.value.clone()),
        };
        match set(&mut tree, &o.path, value, &mut created) {
            Ok(()) => applied.push(&o.source),
            Err(message) => problems.push(problem(o.source.clone(), message)),
        }
    }
    match serde_json::from_value(tree) {
        Ok(c) => (c, problems),
        Err(e) => {
            problems.push(problem(applied.join(", "), e.to_string()));
            (config, problems)
        }
    }
}

fn set(
    tree: &mut Value,
    path: &[String],
    value: Value,
    created: &mut Vec<Vec<String>>,
) -> Result<(), String> {
    let mut node = tree;
    for (depth, key) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        let here = path.get(..depth).unwrap_or_default();
        if node.is_null() {
            *node = Value::Object(serde_json::Map::new());
            created.push(here.to_vec());
        }
        let open = created.iter().any(|c| here.starts_with(c));
        node = match node {
            Value::Object(map) => {
                // Fields of absent optional sections are not in the tree yet; anything
                // else must exist.
                if !map.contains_key(key) && !open {
                    return Err(format!("`{}` is not a configuration key", path.join(".")));
                }
                map.entry(key.clone()).or_insert(Value::Null)
            }
            Value::Array(items) => {
                let index: usize = key
                    .parse()
                    .map_err(|_| format!("`{key}` in `{}` is not a list index", path.join(".")))?;
                if index > items.len() {
                    return Err(format!(
                        "`{}`: index {index} is past the end of the list ({} items)",
                        path.join("."),
                        items.len()
                    ));
                }
                if index == items.len() {
                    items.push(Value::Null);
                }
                items
                    .get_mut(index)
                    .ok_or_else(|| format!("`{}`: no item {index}", path.join(".")))?
            }
            _ => {
                return Err(format!(
                    "`{}` goes below a value that is not a section",
                    path.join(".")
                ));
            }
        };
        if last {
            *node = value;
            return Ok(());
        }
    }
    Err(String::from("empty key path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nested_keys_lists_and_absent_sections() {
        let sets = [
            Override::parse("auth.jwks_url=https://idp/jwks").unwrap(),
            Override::parse("upstreams.0.address=127.0.0.1:9000").unwrap(),
            Override::parse("context.trusted_hops=[10.0.0.0/8]").unwrap(),
            Override::parse("listen.tls.address=0.0.0.0:8443").unwrap(),
            Override::parse("listen.tls.cert_file=/c").unwrap(),
            Override::parse("listen.tls.key_file=/k").unwrap(),
        ];
        let (c, problems) = apply(Config::default(), &sets);
        assert_eq!(problems, vec![]);
        assert_eq!(c.auth.jwks_url.as_deref(), Some("https://idp/jwks"));
        assert_eq!(c.upstreams[0].address, "127.0.0.1:9000");
        assert_eq!(c.context.trusted_hops, ["10.0.0.0/8"]);
        assert_eq!(c.listen.tls.unwrap().address, "0.0.0.0:8443");
    }

    #[test]
    fn an_unknown_key_names_its_source() {
        let sets = [Override::parse("auth.jwks_uri=x").unwrap()];
        let (_, problems) = apply(Config::default(), &sets);
        assert_eq!(problems[0].at, "--set auth.jwks_uri");
        let env = Override::from_env("PORTCULLIS_OPS__ADRESS", "x").unwrap();
        assert_eq!(
            apply(Config::default(), &[env]).1[0].at,
            "PORTCULLIS_OPS__ADRESS"
        );
        assert!(Override::from_env("PORTCULLIS_POLICY_DIR", "x").is_none());
        assert!(Override::from_env("HOME", "x").is_none());
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused() {
        let sets = [Override::parse("threads=many").unwrap()];
        let (c, problems) = apply(Config::default(), &sets);
        assert!(problems[0].at.contains("--set threads"), "{problems:?}");
        assert_eq!(c, Config::default());
    }
}
