//! Value syntax of Go's `flag` and `strconv` packages, which etcd's flags use: the same
//! inputs must be accepted and rejected, with the same error words (`parse error`,
//! `value out of range`), so scripts written for etcd work unchanged.

use std::time::Duration;

/// Go `strconv.ParseBool`.
pub fn parse_bool(text: &str) -> Result<bool, &'static str> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("parse error"),
    }
}

/// Go `strconv.ParseUint(text, 0, 64)` as used by `flag.Uint`/`Uint64`: base prefixes
/// `0x`, `0o`, `0b`, a leading `0` for octal, and `_` separators only with a prefix.
pub fn parse_uint(text: &str) -> Result<u64, &'static str> {
    let (digits, radix) = split_radix(text)?;
    u64::from_str_radix(&digits, radix).map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => "value out of range",
        _ => "parse error",
    })
}

/// Go `strconv.ParseInt(text, 0, 64)` as used by `flag.Int`/`Int64`.
pub fn parse_int(text: &str) -> Result<i64, &'static str> {
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = parse_uint(rest)?;
    if negative {
        if magnitude > i64::MAX as u64 + 1 {
            return Err("value out of range");
        }
        Ok((magnitude as i64).wrapping_neg())
    } else {
        i64::try_from(magnitude).map_err(|_| "value out of range")
    }
}

fn split_radix(text: &str) -> Result<(String, u32), &'static str> {
    let lower = text.to_ascii_lowercase();
    let (body, radix, prefixed) = if let Some(rest) = lower.strip_prefix("0x") {
        (rest, 16, true)
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (rest, 8, true)
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (rest, 2, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (&lower[1..], 8, true)
    } else {
        (lower.as_str(), 10, false)
    };
    if body.contains('_') && !prefixed {
        return Err("parse error");
    }
    let digits: String = body.chars().filter(|&c| c != '_').collect();
    // from_str_radix accepts a leading '+', Go does not here.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err("parse error");
    }
    Ok((digits, radix))
}

/// Go `time.ParseDuration`: a sequence of decimal numbers, each with optional fraction
/// and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `300ms`, `1.5h`, `2h45m`;
/// a bare `0` is allowed. Negative durations are rejected (no etcd flag takes one).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration \"{text}\"");
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if text.starts_with('-') {
        return Err(invalid());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration \"{text}\"")),
            unit => {
                return Err(format!(
                    "time: unknown unit \"{unit}\" in duration \"{text}\""
                ))
            }
        };
        rest = &rest[unit_len..];
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        let mut part_ns = whole.checked_mul(unit_ns).ok_or_else(invalid)?;
        let mut scale = unit_ns;
        for digit in fraction.chars().take(30) {
            scale /= 10;
            part_ns += u128::from(digit.to_digit(10).unwrap_or(0)) * scale;
        }
        total_ns = total_ns.checked_add(part_ns).ok_or_else(invalid)?;
        if total_ns > i64::MAX as u128 {
            return Err(invalid());
        }
    }
    Ok(Duration::from_nanos(total_ns as u64))
}

#[cfg(test)]
mod tests {
    //! Checks Go's accepted and rejected spellings for bools, integers and durations.
    use super::*;

    #[test]
    fn bools() {
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(t), Ok(true));
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(f), Ok(false));
        }
        assert!(parse_bool("yes").is_err());
        assert!(parse_bool("").is_err());
    }

    #[test]
    fn integers() {
        assert_eq!(parse_uint("128"), Ok(128));
        assert_eq!(parse_uint("0x10"), Ok(16));
        assert_eq!(parse_uint("010"), Ok(8));
        assert_eq!(parse_uint("0"), Ok(0));
        assert_eq!(parse_uint("1_000"), Err("parse error"));
        assert_eq!(parse_uint("0x1_0"), Ok(16));
        assert_eq!(parse_uint("+5"), Err("parse error"));
        assert_eq!(parse_uint("-5"), Err("parse error"));
        assert_eq!(parse_uint("abc"), Err("parse error"));
        assert_eq!(
            parse_uint("99999999999999999999"),
            Err("value out of range")
        );
        assert_eq!(parse_int("-5"), Ok(-5));
        assert_eq!(parse_int("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_int("9223372036854775808"), Err("value out of range"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2h45m"), Ok(Duration::from_secs(9900)));
        assert_eq!(parse_duration("1µs"), Ok(Duration::from_micros(1)));
        assert!(parse_duration("5").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
