//! The reward: a file data scientists own, e.g.
//!
//! ```toml
//! reward = "conversion * margin - 2 * opt_out - complaint"
//! window_seconds = 86400      # outcomes later than this after the decision are kept, not trained on
//! ```
//!
//! The expression is arithmetic (`+ - * /`, parentheses, `min(a, b)`, `max(a, b)`) over a
//! decision's outcome fields: `shown click add_to_cart conversion decline opt_out complaint`
//! (how many such events it had), `revenue` and `margin` (summed over conversions). A decision
//! with no outcome at all gets the expression's value on all-zero fields (the "default reward"
//! of the Decision Service paper) unless the file sets `no_outcome_reward`.
use serde::Deserialize;

use nudge_records::{OutcomeTotals, RewardField};

fn field_names() -> String {
    RewardField::ALL.map(RewardField::name).join(", ")
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RewardError {
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("reward expression, column {col}: {reason}")]
    Syntax { col: usize, reason: String },
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Num(f64),
    Field(RewardField),
    Neg(Box<Expr>),
    Bin(char, Box<Expr>, Box<Expr>),
    Call(&'static str, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone)]
pub struct Reward {
    expr: Expr,
    pub source: String,
    pub window_ms: u64,
    pub no_outcome_reward: f64,
    /// sha256 of the file, recorded in every policy trained with it.
    pub sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewardFile {
    reward: String,
    #[serde(default = "day")]
    window_seconds: f64,
    #[serde(default)]
    no_outcome_reward: Option<f64>,
}

fn day() -> f64 {
    86_400.0
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, RewardError> {
        Err(RewardError::Syntax {
            col: self.i + 1,
            reason: reason.into(),
        })
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expr(&mut self) -> Result<Expr, RewardError> {
        let mut e = self.term()?;
        loop {
            if self.eat(b'+') {
                e = Expr::Bin('+', Box::new(e), Box::new(self.term()?));
            } else if self.eat(b'-') {
                e = Expr::Bin('-', Box::new(e), Box::new(self.term()?));
            } else {
                return Ok(e);
            }
        }
    }
    fn term(&mut self) -> Result<Expr, RewardError> {
        let mut e = self.factor()?;
        loop {
            if self.eat(b'*') {
                e = Expr::Bin('*', Box::new(e), Box::new(self.factor()?));
            } else if self.eat(b'/') {
                e = Expr::Bin('/', Box::new(e), Box::new(self.factor()?));
            } else {
                return Ok(e);
            }
        }
    }
    fn factor(&mut self) -> Result<Expr, RewardError> {
        self.ws();
        if self.eat(b'-') {
            return Ok(Expr::Neg(Box::new(self.factor()?)));
        }
        if self.eat(b'(') {
            let e = self.expr()?;
            if !self.eat(b')') {
                return self.err("expected `)`");
            }
            return Ok(e);
        }
        let start = self.i;
        match self.s.get(self.i) {
            Some(c) if c.is_ascii_digit() || *c == b'.' => {
                while self.i < self.s.len() && (self.s[self.i].is_ascii_digit() || self.s[self.i] == b'.') {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                match t.parse::<f64>() {
                    Ok(v) => Ok(Expr::Num(v)),
                    Err(_) => {
                        self.i = start;
                        self.err(format!("bad number `{t}`"))
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_') {
                    self.i += 1;
                }
                let name = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                if let Some(f) = ["min", "max"].into_iter().find(|f| *f == name) {
                    if !self.eat(b'(') {
                        return self.err(format!("expected `(` after {f}"));
                    }
                    let a = self.expr()?;
                    if !self.eat(b',') {
                        return self.err(format!("{f} takes two arguments"));
                    }
                    let b = self.expr()?;
                    if !self.eat(b')') {
                        return self.err("expected `)`");
                    }
                    return Ok(Expr::Call(f, Box::new(a), Box::new(b)));
                }
                match RewardField::from_name(name) {
                    Some(f) => Ok(Expr::Field(f)),
                    None => {
                        self.i = start;
                        self.err(format!("unknown field `{name}` (fields: {})", field_names()))
                    }
                }
            }
            Some(c) => self.err(format!("unexpected `{}`", *c as char)),
            None => self.err("expression ends too soon"),
        }
    }
}

fn eval(e: &Expr, f: &OutcomeTotals) -> f64 {
    match e {
        Expr::Num(v) => *v,
        Expr::Field(field) => f.get(*field),
        Expr::Neg(a) => -eval(a, f),
        Expr::Bin(op, a, b) => {
            let (a, b) = (eval(a, f), eval(b, f));
            match op {
                '+' => a + b,
                '-' => a - b,
                '*' => a * b,
                _ => a / b,
            }
        }
        Expr::Call(name, a, b) => {
            let (a, b) = (eval(a, f), eval(b, f));
            if *name == "min" {
                a.min(b)
            } else {
                a.max(b)
            }
        }
    }
}

impl Reward {
    fn parse_expression(src: &str) -> Result<Expr, RewardError> {
        let mut p = Parser {
            s: src.as_bytes(),
            i: 0,
        };
        let e = p.expr()?;
        p.ws();
        if p.i < p.s.len() {
            return p.err(format!("unexpected `{}`", p.s[p.i] as char));
        }
        Ok(e)
    }

    pub fn from_toml(name: &str, text: &str) -> Result<Self, RewardError> {
        let file_err = |reason: String| RewardError::File {
            file: name.to_string(),
            reason,
        };
        let f: RewardFile = toml::from_str(text).map_err(|e| file_err(e.to_string()))?;
        let expr = Self::parse_expression(&f.reward)?;
        let zero = eval(&expr, &OutcomeTotals::default());
        if !(f.window_seconds >= 0.0 && f.window_seconds.is_finite()) {
            return Err(file_err("window_seconds must be a non-negative number".into()));
        }
        let no_outcome_reward = f.no_outcome_reward.unwrap_or(zero);
        if !no_outcome_reward.is_finite() {
            return Err(file_err(
                "the reward of no outcome is not a finite number (division by zero?)".into(),
            ));
        }
        use sha2::Digest;
        Ok(Self {
            expr,
            source: f.reward,
            window_ms: (f.window_seconds * 1000.0).round() as u64,
            no_outcome_reward,
            sha256: hex::encode(sha2::Sha256::digest(text.as_bytes())),
        })
    }

    pub fn load(path: &std::path::Path) -> Result<Self, RewardError> {
        let text = std::fs::read_to_string(path).map_err(|e| RewardError::File {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&path.display().to_string(), &text)
    }

    /// The reward of a decision: its outcomes' value, or the no-outcome reward. A non-finite
    /// value (e.g. a division by a zero field) counts as the no-outcome reward.
    pub fn value(&self, outcomes: Option<&OutcomeTotals>) -> f64 {
        match outcomes {
            None => self.no_outcome_reward,
            Some(f) => {
                let v = eval(&self.expr, f);
                if v.is_finite() {
                    v
                } else {
                    self.no_outcome_reward
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_the_documented_example() {
        let r = Reward::from_toml("r.toml", "reward = \"conversion * margin - 2 * opt_out - complaint\"\n").unwrap();
        let mut f = OutcomeTotals::default();
        f.set(RewardField::Conversion, f.get(RewardField::Conversion) + 1.0);
        f.set(RewardField::Margin, f.get(RewardField::Margin) + 12.5);
        f.set(RewardField::Complaint, f.get(RewardField::Complaint) + 1.0);
        assert_eq!(r.value(Some(&f)), 11.5);
        f.set(RewardField::OptOut, f.get(RewardField::OptOut) + 1.0);
        assert_eq!(r.value(Some(&f)), 9.5);
        assert_eq!(r.value(None), 0.0);
        assert_eq!(r.window_ms, 86_400_000);
        let r = Reward::from_toml(
            "r.toml",
            "reward = \"max(click, 0.5) - (1 + 1) * -decline\"\nno_outcome_reward = -0.1\nwindow_seconds = 60",
        )
        .unwrap();
        let mut f = OutcomeTotals::default();
        f.set(RewardField::Decline, f.get(RewardField::Decline) + 1.0);
        assert_eq!(r.value(Some(&f)), 2.5);
        assert_eq!(r.value(None), -0.1);
        assert_eq!(r.window_ms, 60_000);
    }

    #[test]
    fn syntax_errors_say_where() {
        let e = Reward::from_toml("r.toml", "reward = \"conversion * (margin - 2\"").unwrap_err();
        assert!(
            matches!(e, RewardError::Syntax { .. }) && e.to_string().contains("expected `)`"),
            "{e}"
        );
        let e = Reward::from_toml("r.toml", "reward = \"conversoin * margin\"").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "reward expression, column 1: unknown field `conversoin` (fields: {})",
                field_names()
            )
        );
        let e = Reward::from_toml("r.toml", "reward = \"click +\"").unwrap_err();
        assert!(e.to_string().contains("ends too soon"), "{e}");
        let e = Reward::from_toml("r.toml", "reward = \"click / shown\"").unwrap_err();
        assert!(e.to_string().contains("no outcome"), "{e}");
        let e = Reward::from_toml("r.toml", "rewrd = \"click\"").unwrap_err();
        assert!(e.to_string().starts_with("r.toml:"), "{e}");
    }
}
