//! Kubernetes resource quantities (`10Mi`, `.05`, `200m`, `1e3`), enough to validate them and to
//! compare two spellings of the same amount.

use std::fmt;

/// A quantity as the user wrote it, with its numeric value for comparisons.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    text: String,
    value: f64,
}

const SUFFIXES: &[(&str, f64)] = &[
    ("Ki", 1024.0),
    ("Mi", 1024.0 * 1024.0),
    ("Gi", 1024.0 * 1024.0 * 1024.0),
    ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("n", 1e-9),
    ("u", 1e-6),
    ("m", 1e-3),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
    ("P", 1e15),
    ("E", 1e18),
];

const EXPECTED: &str = "a Kubernetes quantity such as 10Mi, 1Gi, 100m or 0.5";

impl Quantity {
    /// Parses the Kubernetes quantity grammar: sign, decimal number, then a binary suffix,
    /// a decimal suffix or an exponent.
    pub fn parse(text: &str) -> Result<Quantity, String> {
        let s = text.trim();
        let (number, multiplier) = split_suffix(s).ok_or_else(|| EXPECTED.to_string())?;
        let unsigned = number.strip_prefix(['+', '-']).unwrap_or(number);
        let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits_ok(int) || !digits_ok(frac) {
            return Err(EXPECTED.into());
        }
        let value: f64 = number.parse().map_err(|_| EXPECTED.to_string())?;
        Ok(Quantity { text: s.to_string(), value: value * multiplier })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The amount in base units (bytes, cores).
    pub fn value(&self) -> f64 {
        self.value
    }

    pub fn is_negative(&self) -> bool {
        self.value < 0.0
    }

    /// Whether two spellings denote the same amount (`.05` and `50m`).
    pub fn same_amount(a: &str, b: &str) -> bool {
        match (Quantity::parse(a), Quantity::parse(b)) {
            (Ok(a), Ok(b)) => (a.value - b.value).abs() <= a.value.abs().max(b.value.abs()) * 1e-9,
            _ => false,
        }
    }
}

fn split_suffix(s: &str) -> Option<(&str, f64)> {
    for (suffix, multiplier) in SUFFIXES {
        if let Some(number) = s.strip_suffix(suffix) {
            return Some((number, *multiplier));
        }
    }
    if let Some(pos) = s.find(['e', 'E']) {
        let exponent: i32 = s[pos + 1..].parse().ok()?;
        return Some((&s[..pos], 10f64.powi(exponent)));
    }
    Some((s, 1.0))
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_quantities_users_write() {
        for (text, value) in [
            ("10Mi", 10.0 * 1024.0 * 1024.0),
            ("20Mi", 20.0 * 1024.0 * 1024.0),
            (".05", 0.05),
            ("0.2", 0.2),
            ("200m", 0.2),
            ("1", 1.0),
            ("1e3", 1000.0),
            ("1.5Gi", 1.5 * 1024.0 * 1024.0 * 1024.0),
            ("128974848", 128974848.0),
            ("129M", 129e6),
            ("-1", -1.0),
            ("+2", 2.0),
            ("5.", 5.0),
        ] {
            let q = Quantity::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!((q.value() - value).abs() < 1e-9 * value.abs().max(1.0), "{text}");
            assert_eq!(q.as_str(), text);
        }
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for text in ["", "Mi", "ten", "10MB", "10 Mi", "1.2.3", "0x10", "--1", ".", "1e", "e3", "10mi"] {
            assert!(Quantity::parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn compares_spellings_by_amount() {
        assert!(Quantity::same_amount(".05", "50m"));
        assert!(Quantity::same_amount("1Gi", "1024Mi"));
        assert!(Quantity::same_amount("1k", "1000"));
        assert!(!Quantity::same_amount("1Ki", "1k"));
        assert!(!Quantity::same_amount("abc", "abc"));
    }

    #[test]
    fn knows_negative_amounts() {
        assert!(Quantity::parse("-10Mi").map(|q| q.is_negative()).unwrap_or(false));
        assert!(!Quantity::parse("0").map(|q| q.is_negative()).unwrap_or(true));
    }
}
