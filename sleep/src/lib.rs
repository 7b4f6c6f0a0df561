//! Command line of kwarm's `sleep` holder, as pure functions.
//!
//! This library is `no_std` and allocation-free so that the static binary (`src/main.rs`) links it
//! as is, while `cargo test` builds it with std and runs the unit tests below on the host.
#![cfg_attr(not(test), no_std)]

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Sleep this many nanoseconds; `None` is forever (`infinity`, or no argument at all).
    Sleep(Option<u64>),
    /// Write a copy of our own executable to this path (mode 0555) and exit.
    CopyTo(&'a [u8]),
}

/// The longest accepted duration, as in Go: `i64::MAX` nanoseconds (about 292 years).
pub const MAX_NANOS: u64 = i64::MAX as u64;

/// Parses the arguments that follow the program name: nothing, `infinity`, one Go-style duration,
/// or `--copy-to PATH`. `None` means the command line is bad (print the usage, exit 2).
pub fn parse_args<'a>(args: &[&'a [u8]]) -> Option<Action<'a>> {
    Some(match *args {
        [] => Action::Sleep(None),
        [word] if eq(word, b"infinity") => Action::Sleep(None),
        [option, path] if eq(option, b"--copy-to") && !path.is_empty() => Action::CopyTo(path),
        [duration] => Action::Sleep(Some(parse_duration(duration)?)),
        _ => return None,
    })
}

/// `a == b`, as one small loop shared by all callers: the binary has no `memcmp`, and matching
/// on byte-string patterns unrolls into a compare and a branch per byte.
#[inline(never)]
fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Parses a duration the way Go's `time.ParseDuration` does, into nanoseconds: one or more parts,
/// each a decimal number with an optional fraction and a unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`,
/// `m`, `h`), e.g. `720h`, `1h30m`, `1.5h`, `.5s`, `100ms`; a bare `0` is the only number allowed
/// without a unit. Unlike Go, a sign is refused: a negative sleep makes no sense. Fractions finer
/// than a nanosecond are dropped. `None` on anything else, or above [`MAX_NANOS`].
pub fn parse_duration(s: &[u8]) -> Option<u64> {
    if s == b"0" {
        return Some(0);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    // One part per round: a number (digits and dots), then a unit (anything else). An empty
    // string fails like an empty unit.
    loop {
        let number_len = rest.iter().take_while(|&&c| c == b'.' || c.is_ascii_digit()).count();
        // (The `_checked` splits cannot fail; they just keep a panic out of the binary.)
        let (number, tail) = rest.split_at_checked(number_len)?;
        let unit_len = tail.iter().take_while(|&&c| c != b'.' && !c.is_ascii_digit()).count();
        let (unit, tail) = tail.split_at_checked(unit_len)?;
        rest = tail;
        let unit = unit_nanos(unit)?;
        // Accumulate in nanoseconds: each integer digit multiplies what is there by ten and adds
        // its units; each fraction digit adds a tenth of what the previous digit was worth, so
        // digits finer than a nanosecond add nothing. If the whole part fits, so does every
        // intermediate value; the checks catch the rest.
        let mut part: u64 = 0;
        let mut worth = unit;
        let mut fraction = false;
        let mut digits = false;
        for &c in number {
            if c == b'.' {
                if fraction {
                    return None; // a second dot
                }
                fraction = true;
                continue;
            }
            digits = true;
            let digit = u64::from(c - b'0');
            if fraction {
                worth /= 10;
                part = part.checked_add(digit * worth)?;
            } else {
                part = part.checked_mul(10)?.checked_add(digit * unit)?;
            }
        }
        if !digits {
            return None; // e.g. `h`, `.s`, `1h.m`
        }
        total = total.checked_add(part)?;
        if rest.is_empty() {
            break;
        }
    }
    (total <= MAX_NANOS).then_some(total)
}

/// Nanoseconds in one unit, as spelled by Go.
fn unit_nanos(unit: &[u8]) -> Option<u64> {
    Some(match unit {
        b"ns" => 1,
        // `us`, then U+00B5 MICRO SIGN and U+03BC GREEK SMALL LETTER MU in UTF-8, as Go accepts.
        b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => 1_000,
        b"ms" => 1_000_000,
        b"s" => 1_000_000_000,
        b"m" => 60_000_000_000,
        b"h" => 3_600_000_000_000,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;

    fn d(s: &str) -> Option<u64> {
        parse_duration(s.as_bytes())
    }

    #[test]
    fn valid_durations() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("0s", 0),
            ("0h0m0s", 0),
            ("10ns", 10),
            ("300us", 300 * US),
            ("300µs", 300 * US),
            ("300μs", 300 * US),
            ("100ms", 100 * MS),
            ("1s", S),
            ("90s", 90 * S),
            ("5m", 5 * M),
            ("720h", 720 * H),
            ("1h30m", H + 30 * M),
            ("1h30m10s", H + 30 * M + 10 * S),
            ("2h45m30.5s", 2 * H + 45 * M + 30 * S + 500 * MS),
            ("1s500ms", S + 500 * MS),
            ("1m1m", 2 * M),   // Go allows a unit twice and adds
            ("1ms1h", H + MS), // and any order
            ("1.5h", H + 30 * M),
            ("1.5s", 1_500 * MS),
            (".5s", 500 * MS),
            ("1.s", S),
            ("0.1s", 100 * MS),
            ("1.001s", S + MS),
            ("1.0000000001s", S), // below a nanosecond: dropped
            ("0.9ns", 0),
            ("1.999999999999s", S + 999_999_999),
            ("1.25m", 75 * S),
            ("0.000001h", 3_600 * US),
            ("007s", 7 * S),
            ("1.5us", 1_500),
            ("2562047h47m16.854775807s", MAX_NANOS),
            ("9223372036854775807ns", MAX_NANOS),
        ];
        for &(input, want) in cases {
            assert_eq!(d(input), Some(want), "{input:?}");
        }
    }

    #[test]
    fn invalid_durations() {
        let cases = [
            "",
            " ",
            "1",  // missing unit
            "00", // only a bare `0` may omit the unit, as in Go
            "10",
            "1h30",
            "h",
            "s1",
            ".",
            ".s",
            "1..5s",
            "1.5.5s",
            "1h.m",
            "-1s",
            "+1s",
            "-0",
            "1 s",
            " 1s",
            "1s ",
            "1S",
            "1H",
            "1sec",
            "1d",
            "1w",
            "1hm",
            "1µ",
            "1μ",
            "1\u{b5}",
            "1\u{3bc}",
            "1\u{b5}m",
            "1e3s",
            "0x10s",
            "infinity",
            "inf",
            "1h\0",
            "\u{ff11}s", // fullwidth digit one
        ];
        for input in cases {
            assert_eq!(d(input), None, "{input:?}");
        }
        // Bytes that are not UTF-8 at all.
        assert_eq!(parse_duration(b"1\xffs"), None);
        assert_eq!(parse_duration(b"1\xc2s"), None);
    }

    #[test]
    fn overflow_is_refused() {
        let cases = [
            "9223372036854775808ns", // i64::MAX + 1
            "2562047h47m16.854775808s",
            "2562048h",
            "18446744073709551615ns", // u64::MAX: fits u64, not Go's i64
            "18446744073709551616ns", // does not even fit u64
            "99999999999999999999999h",
            "5124095h",                                   // fits in u64 nanoseconds, not in i64
            "2562047h2562047h",                           // parts sum above the limit
            "9223372036854775807ns1ns",                   // one too many
            "1.5h9223372036854775807ns",                  // sum overflows u64 in the middle
            "100000000000000000000.5s",                   // integer part overflows
            "4611686018427387904ns4611686018427387904ns", // exactly 2^63
            "5124095.9h",                                 // the fraction takes it past u64::MAX
        ];
        for input in cases {
            assert_eq!(d(input), None, "{input:?}");
        }
    }

    #[test]
    fn long_fractions_are_fine() {
        let many_digits = format!("1.{}s", "9".repeat(200));
        assert_eq!(d(&many_digits), Some(S + 999_999_999));
        let many_zeros = format!("{}1s", "0".repeat(200));
        assert_eq!(d(&many_zeros), Some(S));
    }

    fn args(list: &[&'static str]) -> Option<Action<'static>> {
        let list: Vec<&[u8]> = list.iter().map(|a| a.as_bytes()).collect();
        parse_args(&list)
    }

    #[test]
    fn command_lines() {
        assert_eq!(args(&[]), Some(Action::Sleep(None)));
        assert_eq!(args(&["infinity"]), Some(Action::Sleep(None)));
        assert_eq!(args(&["0"]), Some(Action::Sleep(Some(0))));
        assert_eq!(args(&["720h"]), Some(Action::Sleep(Some(720 * H))));
        assert_eq!(args(&["100ms"]), Some(Action::Sleep(Some(100 * MS))));
        assert_eq!(args(&["--copy-to", "/kip/sleep"]), Some(Action::CopyTo(b"/kip/sleep")));
        // A path that looks like an option or a duration is still a path.
        assert_eq!(args(&["--copy-to", "1h"]), Some(Action::CopyTo(b"1h")));
    }

    #[test]
    fn bad_command_lines() {
        for list in [
            &["1x"][..],
            &[""],
            &["-h"],
            &["--help"],
            &["infinity", "infinity"],
            &["1h", "30m"],
            &["1h", "infinity"],
            &["--copy-to"],
            &["--copy-to", ""],
            &["--copy-to", "/a", "/b"],
            &["--copy-to=/kip/sleep"],
            &["--copy"],
            &["Infinity"],
        ] {
            assert_eq!(args(list), None, "{list:?}");
        }
    }
}
