//! Money as integer cents. Prices are never floats here: a float cannot hold 0.10 exactly, and a
//! customer who is quoted ¥89.90 must be charged ¥89.90. Every operation is overflow-checked,
//! and the one place that divides — a percentage — rounds in one documented way.
use serde::{Deserialize, Serialize};
use std::fmt;

/// An amount in cents (fen for CNY). Negative amounts exist only as intermediate differences;
/// catalog prices and quotes are never negative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct Cents(pub i64);

/// Why an amount could not be read or computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The result does not fit in 64-bit cents.
    #[error("amount overflows")]
    Overflow,
    /// The text is not an amount like `89.90`, `89.9` or `89`.
    #[error("`{text}` is not an amount (write it like 89.90)")]
    Parse {
        /// What was given.
        text: String,
    },
}

impl Cents {
    /// Zero.
    pub const ZERO: Cents = Cents(0);

    /// `self + other`, or `Overflow`.
    pub fn checked_add(self, other: Cents) -> Result<Cents, MoneyError> {
        self.0.checked_add(other.0).map(Cents).ok_or(MoneyError::Overflow)
    }

    /// `self - other`, or `Overflow`.
    pub fn checked_sub(self, other: Cents) -> Result<Cents, MoneyError> {
        self.0.checked_sub(other.0).map(Cents).ok_or(MoneyError::Overflow)
    }

    /// `self × n` (a quantity), or `Overflow`.
    pub fn times(self, n: u32) -> Result<Cents, MoneyError> {
        self.0.checked_mul(i64::from(n)).map(Cents).ok_or(MoneyError::Overflow)
    }

    /// `basis_points / 10,000` of the amount, **rounded half up to the cent** (10 % of ¥0.05 is
    /// ¥0.01: half a cent rounds up, in the customer's favour when the result is a discount).
    /// Computed in 128 bits, so only a result beyond 64 bits overflows.
    pub fn percent(self, basis_points: u32) -> Result<Cents, MoneyError> {
        let num = i128::from(self.0) * i128::from(basis_points);
        let q = (num + num.signum() * 5_000) / 10_000;
        i64::try_from(q).map(Cents).map_err(|_| MoneyError::Overflow)
    }

    /// The smaller of two amounts.
    pub fn min(self, other: Cents) -> Cents {
        Cents(self.0.min(other.0))
    }

    /// Reads `89.90`, `89.9`, `89` or `-3.50` exactly (no float on the way); more than two
    /// decimals is an error, not a rounding.
    pub fn parse(text: &str) -> Result<Cents, MoneyError> {
        let err = || MoneyError::Parse { text: text.to_string() };
        let t = text.trim();
        let (neg, t) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        if frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) || (t.contains('.') && frac.is_empty()) {
            return Err(err());
        }
        let whole: i64 = whole.parse().map_err(|_| MoneyError::Overflow)?;
        let frac: i64 = match frac.len() {
            0 => 0,
            1 => frac.parse::<i64>().map_err(|_| err())? * 10,
            _ => frac.parse::<i64>().map_err(|_| err())?,
        };
        let v = whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(frac))
            .ok_or(MoneyError::Overflow)?;
        Ok(Cents(if neg { -v } else { v }))
    }
}

impl fmt::Display for Cents {
    /// `89.90`, `-0.05`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", a / 100, a % 100)
    }
}

impl From<Cents> for String {
    fn from(c: Cents) -> String {
        c.to_string()
    }
}

/// Files write an amount as text (`"89.90"`) or as whole units (`89`); a float (`89.9`
/// unquoted) is refused, since it may already have lost the cents.
impl<'de> Deserialize<'de> for Cents {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Cents;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount as text (\"89.90\") or whole units (89)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cents, E> {
                Cents::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Cents, E> {
                v.checked_mul(100)
                    .map(Cents)
                    .ok_or_else(|| E::custom(MoneyError::Overflow))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Cents, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(|v| v.checked_mul(100))
                    .map(Cents)
                    .ok_or_else(|| E::custom(MoneyError::Overflow))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Cents, E> {
                Err(E::custom(format!("write the amount {v} as text, e.g. \"{v:.2}\"")))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_exactly() {
        for (text, cents, shown) in [
            ("89.90", 8990, "89.90"),
            ("89.9", 8990, "89.90"),
            ("89", 8900, "89.00"),
            ("0.05", 5, "0.05"),
            ("-3.5", -350, "-3.50"),
            (" 12.34 ", 1234, "12.34"),
        ] {
            let c = Cents::parse(text).unwrap();
            assert_eq!(c, Cents(cents), "{text}");
            assert_eq!(c.to_string(), shown);
        }
        for bad in [
            "",
            "1.234",
            "1.",
            ".5",
            "1,50",
            "abc",
            "1e3",
            "--1",
            "99999999999999999999",
        ] {
            assert!(Cents::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percentages_round_half_up_to_the_cent() {
        // (amount, basis points, expected)
        for (amount, bp, want) in [
            (5, 1000, 1),       // 0.5 cent → 1
            (4, 1000, 0),       // 0.4 cent → 0
            (8990, 1500, 1349), // 13.485 → 13.49
            (8990, 1000, 899),
            (0, 5000, 0),
            (100, 10_000, 100),
            (i64::MAX, 10_000, i64::MAX),
        ] {
            assert_eq!(Cents(amount).percent(bp).unwrap(), Cents(want), "{amount} × {bp}");
        }
        assert_eq!(Cents(i64::MAX).percent(20_000), Err(MoneyError::Overflow));
    }

    #[test]
    fn arithmetic_is_overflow_checked() {
        assert_eq!(Cents(i64::MAX).checked_add(Cents(1)), Err(MoneyError::Overflow));
        assert_eq!(Cents(i64::MIN).checked_sub(Cents(1)), Err(MoneyError::Overflow));
        assert_eq!(Cents(i64::MAX / 2 + 1).times(2), Err(MoneyError::Overflow));
        assert_eq!(Cents(250).times(3).unwrap(), Cents(750));
    }

    #[test]
    fn reads_text_or_whole_units_from_files() {
        #[derive(Deserialize)]
        struct P {
            a: Cents,
            b: Cents,
        }
        let p: P = toml::from_str("a = \"89.90\"\nb = 12\n").unwrap();
        assert_eq!((p.a, p.b), (Cents(8990), Cents(1200)));
        assert!(toml::from_str::<P>("a = \"8.999\"\nb = 1\n").is_err());
    }
}
