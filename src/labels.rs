//! Kubernetes name rules (DNS-1123 labels and subdomains, qualified names, label values) and the
//! label-selector syntax of `DEPLOYMENT_SELECTOR`.

use std::collections::BTreeMap;
use std::fmt;

/// A DNS-1123 label: at most 63 lowercase alphanumerics or `-`, alphanumeric at both ends.
pub fn check_dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("a DNS-1123 label of 1 to 63 characters".into());
    }
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    if !bytes.iter().all(|&b| ok_char(b)) || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(
            "a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn check_dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || !s.split('.').all(|l| check_dns1123_label(l).is_ok()) {
        return Err(
            "a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253 characters".into()
        );
    }
    Ok(())
}

/// A label or annotation key: optional DNS subdomain prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` or `.`, alphanumeric at both ends.
pub fn check_qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        check_dns1123_subdomain(p).map_err(|e| format!("prefix {p:?} must be {e}"))?;
    }
    if name.is_empty() || name.len() > 63 || !is_label_value_shape(name) {
        return Err("a qualified name: [prefix/]name, the name 1 to 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric".into());
    }
    Ok(())
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_` or `.`, alphanumeric at both ends.
pub fn check_label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > 63 || !is_label_value_shape(s) {
        return Err(
            "a label value: at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
                .into(),
        );
    }
    Ok(())
}

fn is_label_value_shape(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.';
    !b.is_empty()
        && b.iter().all(|&c| ok(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; `Display` gives the canonical text sent to the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    pub fn default_selector() -> LabelSelector {
        LabelSelector(vec![Requirement::Equals("kwarm.io/enabled".into(), "true".into())])
    }

    /// Parses Kubernetes selector syntax: `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(
                    "a label selector such as app=web,tier in (a,b); found an empty requirement".into()
                );
            }
            requirements.push(parse_requirement(part)?);
        }
        if requirements.is_empty() {
            return Err("a non-empty label selector such as kwarm.io/enabled=true".into());
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether the given labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
            }
        }
        Ok(())
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, ch) in text.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("a label selector with balanced parentheses".into());
        }
    }
    if depth != 0 {
        return Err("a label selector with balanced parentheses".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// `key in (a,b)` → (`key`, `(a,b)`); also without the space before the set, `key in(a,b)`, as
/// Kubernetes accepts it.
fn split_set_operator<'a>(part: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let pattern = format!(" {op}");
    let at = part.find(&pattern)?;
    let rest = &part[at + pattern.len()..];
    rest.trim_start().starts_with('(').then(|| (&part[..at], rest))
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        check_qualified_name(k).map_err(|e| format!("label key {k:?}: {e}"))?;
        Ok(k.to_string())
    };
    let value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        check_label_value(v).map_err(|e| format!("label value {v:?}: {e}"))?;
        Ok(v.to_string())
    };
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(key(k)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    for (op, is_in) in [("notin", false), ("in", true)] {
        if let Some((k, rest)) = split_set_operator(part, op) {
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("{part:?}: a set in parentheses, e.g. {op} (a,b)"))?;
            let values = inner.split(',').map(value).collect::<Result<Vec<_>, _>>()?;
            let k = key(k)?;
            return Ok(if is_in { Requirement::In(k, values) } else { Requirement::NotIn(k, values) });
        }
    }
    if part.contains(['(', ')', ' ', '<', '>']) {
        return Err(format!(
            "{part:?}: a requirement such as key=value, key!=value, key in (a,b), key or !key"
        ));
    }
    Ok(Requirement::Exists(key(part)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "abc-1", "0a", &"a".repeat(63)] {
            assert!(check_dns1123_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(check_dns1123_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_subdomains() {
        assert!(check_dns1123_subdomain("my.secret-1").is_ok());
        assert!(check_dns1123_subdomain("a..b").is_err());
        assert!(check_dns1123_subdomain("Upper").is_err());
    }

    #[test]
    fn qualified_names_and_values() {
        assert!(check_qualified_name("kubernetes.io/os").is_ok());
        assert!(check_qualified_name("Type_1.x").is_ok());
        assert!(check_qualified_name("bad key").is_err());
        assert!(check_qualified_name("Bad_Prefix/x").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_3-a").is_ok());
        assert!(check_label_value("-v").is_err());
    }

    #[test]
    fn set_operators_without_a_space_before_the_set() {
        let s = LabelSelector::parse("tier in(web,api),x notin(a)").expect("valid, as Kubernetes accepts it");
        assert_eq!(s.to_string(), "tier in (web,api),x notin (a)");
        assert!(LabelSelector::parse("tier in web").is_err());
    }

    #[test]
    fn selector_syntax() {
        let s = LabelSelector::parse(
            "kwarm.io/enabled=true, tier in (web,api),env!=dev,team,!legacy,x notin (a)",
        )
        .expect("valid selector");
        assert_eq!(s.0.len(), 6);
        assert_eq!(
            s.to_string(),
            "kwarm.io/enabled=true,tier in (web,api),env!=dev,team,!legacy,x notin (a)"
        );
        assert_eq!(LabelSelector::parse("a==b").map(|s| s.to_string()), Ok("a=b".into()));
    }

    #[test]
    fn selector_errors() {
        for bad in ["", "a=b,", "a in (b", "a in b", "=b", "a=b c", "a in (b))", "a b", "a=-x"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn selector_matching() {
        let labels: BTreeMap<String, String> =
            [("app".into(), "web".into()), ("tier".into(), "front".into())].into();
        let m = |s: &str| LabelSelector::parse(s).map(|s| s.matches(&labels)).unwrap_or(false);
        assert!(m("app=web"));
        assert!(!m("app=api"));
        assert!(m("tier in (front,back)"));
        assert!(!m("tier notin (front)"));
        assert!(m("missing notin (x)"));
        assert!(m("app,!missing"));
        assert!(!m("!app"));
        assert!(m("app!=api"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn key() -> impl Strategy<Value = String> {
            "([a-z]{1,5}(\\.[a-z]{1,4})?/)?[a-z0-9]([a-z0-9._-]{0,8}[a-z0-9])?"
        }

        fn value() -> impl Strategy<Value = String> {
            "([A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?)?"
        }

        fn values() -> impl Strategy<Value = Vec<String>> {
            prop::collection::vec(value().prop_filter("non-empty", |v| !v.is_empty()), 1..4)
        }

        fn requirement() -> impl Strategy<Value = Requirement> {
            prop_oneof![
                key().prop_map(Requirement::Exists),
                key().prop_map(Requirement::NotExists),
                (key(), value()).prop_map(|(k, v)| Requirement::Equals(k, v)),
                (key(), value()).prop_map(|(k, v)| Requirement::NotEquals(k, v)),
                (key(), values()).prop_map(|(k, v)| Requirement::In(k, v)),
                (key(), values()).prop_map(|(k, v)| Requirement::NotIn(k, v)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// The text kwarm sends to the API server parses back to the same selector.
            #[test]
            fn the_canonical_text_parses_back(requirements in prop::collection::vec(requirement(), 1..5)) {
                let selector = LabelSelector(requirements);
                let text = selector.to_string();
                prop_assert_eq!(LabelSelector::parse(&text), Ok(selector), "{}", text);
            }

            /// Anything at all is parsed or refused with a message, never a panic; what parses
            /// has one canonical form.
            #[test]
            fn any_text_is_parsed_or_refused(text in "[a-z0-9=!,() ./_-]{0,30}|.{0,30}") {
                match LabelSelector::parse(&text) {
                    Ok(selector) => {
                        let canonical = selector.to_string();
                        prop_assert_eq!(LabelSelector::parse(&canonical), Ok(selector));
                    }
                    Err(message) => prop_assert!(!message.is_empty()),
                }
            }
        }
    }
}
