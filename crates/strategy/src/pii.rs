//! Personal data masked before text is stored, logged or shown to an agent: mainland mobile
//! numbers, resident ID-card numbers, bank-card numbers (Luhn-checked, so order numbers of the
//! same length survive) and e-mail addresses. What is kept — the last four digits, the e-mail's
//! domain — is what an agent needs to tell two cards or addresses apart.
use regex::Regex;
use std::sync::LazyLock;

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9._%+-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)").expect("static regex"));
/// 18-digit ID (last may be X) or the old 15-digit form.
static ID_CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:^|[^0-9])([1-9]\d{16}[0-9Xx]|[1-9]\d{14})(?:$|[^0-9Xx])").expect("static regex"));
/// Runs of 13–19 digits, optionally grouped by spaces or hyphens.
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:^|[^0-9])(\d(?:[ -]?\d){12,18})(?:$|[^0-9])").expect("static regex"));
/// Mainland mobile numbers, with or without +86 and separators.
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^0-9])((?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4})(?:$|[^0-9])").expect("static regex")
});

/// `text` with personal data masked (`[phone ****5678]`, `[id-card ****123X]`,
/// `[bank-card ****4242]`, `[email ***@example.com]`).
pub fn mask(text: &str) -> String {
    let text = EMAIL.replace_all(text, |c: &regex::Captures<'_>| format!("[email ***@{}]", &c[1]));
    let text = replace_group(&text, &ID_CARD, |m| Some(format!("[id-card ****{}]", last4(m))));
    // Phones before cards: `+86 138 1234 5678` is 13 digits and may pass a Luhn check.
    let text = replace_group(&text, &PHONE, |m| {
        let digits: String = m.chars().filter(char::is_ascii_digit).collect();
        Some(format!("[phone ****{}]", last4(&digits)))
    });
    replace_group(&text, &CARD, |m| {
        let digits: String = m.chars().filter(char::is_ascii_digit).collect();
        luhn(&digits).then(|| format!("[bank-card ****{}]", last4(&digits)))
    })
}

fn last4(s: &str) -> &str {
    let n = s.len();
    &s[n.saturating_sub(4)..]
}

/// Replaces capture group 1 of every match (the context characters around it stay).
fn replace_group(text: &str, re: &Regex, f: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut at = 0;
    while let Some(c) = re.captures_at(text, at) {
        let Some(g) = c.get(1) else { break };
        if let Some(rep) = f(g.as_str()) {
            out.push_str(&text[last..g.start()]);
            out.push_str(&rep);
            last = g.end();
        }
        at = g.end();
    }
    out.push_str(&text[last..]);
    out
}

fn luhn(digits: &str) -> bool {
    let mut sum = 0;
    for (i, d) in digits.bytes().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    digits.len() >= 13 && sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_what_is_personal_and_keeps_the_rest() {
        for (text, want) in [
            (
                "call me on 13812345678 tomorrow",
                "call me on [phone ****5678] tomorrow",
            ),
            ("我的手机号是+86 138-1234-5678", "我的手机号是[phone ****5678]"),
            ("身份证110101199003071234", "身份证[id-card ****1234]"),
            ("ID 11010119900307123X ok", "ID [id-card ****123X] ok"),
            ("card 4242 4242 4242 4242 please", "card [bank-card ****4242] please"),
            ("卡号6222021234567890128", "卡号[bank-card ****0128]"),
            (
                "mail jane.doe+vip@example.co.uk now",
                "mail [email ***@example.co.uk] now",
            ),
            // An order number of card length that fails Luhn is not a card.
            ("order 1234567890123 shipped", "order 1234567890123 shipped"),
            ("order #20241125 and 3 items", "order #20241125 and 3 items"),
            ("no personal data here", "no personal data here"),
        ] {
            assert_eq!(mask(text), want, "{text}");
        }
    }
}
