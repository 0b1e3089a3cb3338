//! Kubernetes resource quantities as CDI passes them in `IMPORTER_IMAGE_SIZE`:
//! plain integers, binary suffixes (Ki, Mi, Gi, Ti, Pi, Ei), decimal suffixes
//! (k, M, G, T, P, E), decimal exponents (e.g. `1e9`) and fractions (rounded up
//! to whole bytes, as a size must be).

/// A quantity that is not a valid Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {0:?}: expected e.g. 10Gi, 500M or 1073741824")]
pub struct QuantityError(pub String);

/// Parses a quantity into bytes.
pub fn parse_quantity(text: &str) -> Result<u64, QuantityError> {
    let fail = || QuantityError(text.to_string());
    let t = text.trim();
    let number_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(number_end);
    if number.is_empty() || number.starts_with('.') && number.len() == 1 {
        return Err(fail());
    }
    let number = number.strip_prefix('+').unwrap_or(number);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if !whole.chars().all(|c| c.is_ascii_digit()) || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return Err(fail());
    }
    // value = digits / 10^fraction_len * multiplier, computed exactly in u128.
    let digits: u128 = format!("{whole}{fraction}").parse().map_err(|_| fail())?;
    let scale = 10u128.checked_pow(fraction.len() as u32).ok_or_else(fail)?;
    let (mul_num, mul_den): (u128, u128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().map_err(|_| fail())?;
            (10u128.checked_pow(exp).ok_or_else(fail)?, 1)
        }
        _ => return Err(fail()),
    };
    let numerator = digits.checked_mul(mul_num).ok_or_else(fail)?;
    let denominator = scale * mul_den;
    let bytes = numerator.div_ceil(denominator);
    u64::try_from(bytes).map_err(|_| fail())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_every_notation_parse_to_bytes() {
        assert_eq!(parse_quantity("1073741824"), Ok(1 << 30));
        assert_eq!(parse_quantity("10Gi"), Ok(10 << 30));
        assert_eq!(parse_quantity("500M"), Ok(500_000_000));
        assert_eq!(parse_quantity("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_quantity("1e9"), Ok(1_000_000_000));
        assert_eq!(parse_quantity("100k"), Ok(100_000));
        assert_eq!(parse_quantity(" 64Mi "), Ok(64 << 20));
        assert_eq!(parse_quantity("0.5"), Ok(1), "fractions round up");
    }

    #[test]
    fn garbage_and_overflow_are_errors() {
        for bad in [
            "",
            "Gi",
            "10GB",
            "ten",
            "1.2.3Gi",
            "-1Gi",
            "99999999999Ei",
            "1e99",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} should fail");
        }
    }
}
