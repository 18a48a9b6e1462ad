//! The operators' rules: when an offer becomes eligible, how much it is preferred, and what is
//! forbidden — in a TOML file, no code. A rule fires when every condition it states holds
//! (conditions it leaves out hold always); a firing rule's `allow` makes offers eligible with its
//! `priority`, its `forbid` removes offers whatever else allows them. The learned policy then
//! chooses only among what the rules left.
//!
//! Every name is checked at load against what exists — intents of the serving model, offers and
//! categories of the catalog, channels, stages, tiers when the file lists them — so a typo is a
//! load error with file, line and field, never a rule that silently never fires.
//!
//! ```toml
//! tiers = ["regular", "gold", "platinum"]   # optional; when given, `tier` conditions are checked
//!
//! [intents]                                 # what the conversation state needs to know
//! issue = ["order_status", "refund"]        # a service problem is open
//! resolved = ["thanks_bye"]                 # it is solved
//! human = ["human_agent"]                   # the customer asks for a person
//! complaint = ["complaint"]
//!
//! [[rule]]
//! name = "battery question: care bundle for valuable customers"
//! allow = ["care_bundle"]
//! priority = 10
//! [rule.when]
//! intent = ["presales_question"]
//! category = ["phone"]                      # a linked product or cart line of this category
//! tier = ["gold", "platinum"]
//! min_lifetime_value = "5000"
//! channel = ["web", "app"]
//! sentiment = ["neutral", "positive"]
//! turn = [1, 10]                            # inclusive
//! hours = [9, 22]                           # local hour h with 9 ≤ h < 22 (wraps past midnight)
//! stage = ["open", "resolved"]
//! attributes = { city = ["Shanghai", "上海"] }  # the request's customer attributes
//! ```
use crate::catalog::Catalog;
use crate::channel::Channel;
use crate::error::{line_of, toml_error, StrategyError};
use crate::hours;
use crate::money::Cents;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Where a conversation stands, for rules and guardrails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// No service problem is open.
    Open,
    /// The customer has a problem that is not solved yet.
    Issue,
    /// A problem was solved in this conversation.
    Resolved,
}

impl Stage {
    /// The stage's name, as files, replies and feature names write it.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Open => "open",
            Stage::Issue => "issue",
            Stage::Resolved => "resolved",
        }
    }
}

/// Intents with a meaning for the conversation (from the rules file's `[intents]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntentRoles {
    /// Intents that open a service problem.
    pub issue: BTreeSet<String>,
    /// Intents that say it is solved.
    pub resolved: BTreeSet<String>,
    /// Intents that ask for a person.
    pub human: BTreeSet<String>,
    /// Intents that are complaints.
    pub complaint: BTreeSet<String>,
}

/// What the rules see of a turn.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    /// The turn's intent (none when out of scope).
    pub intent: Option<&'a str>,
    /// The turn's sentiment label.
    pub sentiment: Option<&'a str>,
    /// The customer's tier.
    pub tier: &'a str,
    /// The customer's lifetime value.
    pub lifetime_value: Cents,
    /// Where the conversation happens.
    pub channel: Channel,
    /// Categories of the products linked in the conversation and in the cart.
    pub categories: &'a BTreeSet<String>,
    /// SKUs linked in the conversation and in the cart.
    pub products: &'a BTreeSet<String>,
    /// The cart's list value.
    pub cart_value: Cents,
    /// 1-based turn number.
    pub turn: u32,
    /// The shop's local hour, 0–23.
    pub local_hour: u8,
    /// The conversation's stage.
    pub stage: Stage,
    /// The customer's free-form attributes from the request (`member_since`, `city`…).
    pub attributes: &'a BTreeMap<String, String>,
}

/// An offer the rules allow, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eligible {
    /// The offer.
    pub offer: String,
    /// Highest priority among the rules that allow it.
    pub priority: i32,
    /// Names of the rules that allow it.
    pub rules: Vec<String>,
}

/// What the rules say about one turn.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed offers, highest priority first, then by id.
    pub eligible: Vec<Eligible>,
    /// Offers a firing rule forbade (offer, rule), even if another allowed them.
    pub forbidden: Vec<(String, String)>,
}

/// A loaded, validated rules file.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    intents: IntentRoles,
    version: String,
    path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    name: String,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    forbid: Vec<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    when: When,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct When {
    #[serde(default)]
    intent: BTreeSet<String>,
    #[serde(default)]
    sentiment: BTreeSet<String>,
    #[serde(default)]
    tier: BTreeSet<String>,
    min_lifetime_value: Option<Cents>,
    #[serde(default)]
    channel: BTreeSet<Channel>,
    #[serde(default)]
    category: BTreeSet<String>,
    #[serde(default)]
    product: BTreeSet<String>,
    min_cart_value: Option<Cents>,
    max_cart_value: Option<Cents>,
    turn: Option<[u32; 2]>,
    hours: Option<[u8; 2]>,
    #[serde(default)]
    stage: BTreeSet<Stage>,
    /// Customer attribute → allowed values; every listed attribute must have one of them.
    #[serde(default)]
    attributes: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    tiers: Option<BTreeSet<String>>,
    #[serde(default)]
    intents: IntentRoles,
    #[serde(default)]
    rule: Vec<Spanned<Rule>>,
}

/// Names the rules may refer to.
pub struct Vocabulary<'a> {
    /// The serving model's intent labels.
    pub intents: &'a [String],
    /// Its sentiment labels.
    pub sentiments: &'a [String],
    /// The catalog (offers, SKUs, categories).
    pub catalog: &'a Catalog,
}

/// The line of `key = ` in the rule whose table starts at `start` (up to the next `[[`), if the
/// rule has one.
fn key_line(text: &str, start: usize, key: &str) -> Option<usize> {
    let mut offset = start;
    for (i, l) in text.get(start..)?.split_inclusive('\n').enumerate() {
        let t = l.trim_start();
        if i > 0 && t.starts_with("[[") {
            break;
        }
        if t.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(line_of(text, offset));
        }
        offset += l.len();
    }
    None
}

impl Rules {
    /// Reads and validates a rules file against `vocabulary`.
    pub fn load(path: &Path, vocabulary: &Vocabulary<'_>) -> Result<Rules, StrategyError> {
        let text = std::fs::read_to_string(path).map_err(|source| StrategyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text, vocabulary)
    }

    /// Validates rules `text` against `vocabulary` as if read from `path` (which names the file
    /// in errors): what an editor checks before anything is written.
    pub fn parse(path: &Path, text: &str, vocabulary: &Vocabulary<'_>) -> Result<Rules, StrategyError> {
        let text = text.to_string();
        let file: RulesFile = toml::from_str(&text).map_err(|e| toml_error(path, &text, &e))?;
        let intent_known = |i: &String| vocabulary.intents.contains(i);
        for (role, set) in [
            ("issue", &file.intents.issue),
            ("resolved", &file.intents.resolved),
            ("human", &file.intents.human),
            ("complaint", &file.intents.complaint),
        ] {
            if let Some(bad) = set.iter().find(|i| !intent_known(i)) {
                return Err(StrategyError::invalid(
                    path,
                    None,
                    format!("intents.{role}"),
                    format!(
                        "unknown intent `{bad}` (the model knows {})",
                        vocabulary.intents.join(", ")
                    ),
                ));
            }
        }
        let mut rules = Vec::with_capacity(file.rule.len());
        let mut names = BTreeSet::new();
        for spanned in file.rule {
            let start = spanned.span().start;
            let line = Some(line_of(&text, start));
            let r = spanned.into_inner();
            // At the line of the key at fault where the rule has one (`when.tier` → `tier = `),
            // so an editor can put the caret on it.
            let bad = |field: &str, reason: String| {
                let key = field.rsplit('.').next().unwrap_or(field);
                let at = key_line(&text, start, key).or(line);
                StrategyError::invalid(path, at, format!("rule \"{}\".{field}", r.name), reason)
            };
            if r.name.trim().is_empty() {
                return Err(StrategyError::invalid(path, line, "rule.name", "empty"));
            }
            if !names.insert(r.name.clone()) {
                return Err(bad("name", "another rule has this name".into()));
            }
            if r.allow.is_empty() && r.forbid.is_empty() {
                return Err(bad("allow", "a rule must allow or forbid at least one offer".into()));
            }
            for (f, ids) in [("allow", &r.allow), ("forbid", &r.forbid)] {
                if let Some(id) = ids.iter().find(|id| vocabulary.catalog.offer(id).is_none()) {
                    return Err(bad(f, format!("unknown offer `{id}`")));
                }
            }
            let w = &r.when;
            if let Some(i) = w.intent.iter().find(|i| !intent_known(i)) {
                return Err(bad("when.intent", format!("unknown intent `{i}`")));
            }
            if let Some(s) = w.sentiment.iter().find(|s| !vocabulary.sentiments.contains(s)) {
                return Err(bad(
                    "when.sentiment",
                    format!(
                        "unknown sentiment `{s}` (the model knows {})",
                        vocabulary.sentiments.join(", ")
                    ),
                ));
            }
            if let Some(tiers) = &file.tiers {
                if let Some(t) = w.tier.iter().find(|t| !tiers.contains(*t)) {
                    return Err(bad("when.tier", format!("unknown tier `{t}` (tiers = {tiers:?})")));
                }
            }
            if let Some(c) = w.category.iter().find(|c| !vocabulary.catalog.has_category(c)) {
                return Err(bad("when.category", format!("no product has category `{c}`")));
            }
            if let Some(p) = w.product.iter().find(|p| vocabulary.catalog.product(p).is_none()) {
                return Err(bad("when.product", format!("unknown SKU `{p}`")));
            }
            if let Some([a, b]) = w.turn {
                if a > b || a == 0 {
                    return Err(bad("when.turn", format!("[{a}, {b}] must be 1 ≤ first ≤ last")));
                }
            }
            if let Some([a, b]) = w.hours {
                if !hours::valid([a, b]) {
                    return Err(bad("when.hours", format!("[{a}, {b}] must be hours 0–24, not equal")));
                }
            }
            if let (Some(lo), Some(hi)) = (w.min_cart_value, w.max_cart_value) {
                if lo > hi {
                    return Err(bad("when.max_cart_value", "is below min_cart_value".into()));
                }
            }
            rules.push(r);
        }
        Ok(Rules {
            rules,
            intents: file.intents,
            version: crate::catalog::short_hash(text.as_bytes()),
            path: path.to_path_buf(),
        })
    }

    /// The rules' version: the first 12 hex digits of the file's sha256.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where they were read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The intents with a meaning for the conversation.
    pub fn intents(&self) -> &IntentRoles {
        &self.intents
    }

    /// The intent and sentiment labels these rules name (roles and conditions): what a model
    /// must know for them to mean what they say. Rules are checked against the model when they
    /// change; a new model is checked against them with this.
    pub fn labels_named(&self) -> (BTreeSet<&str>, BTreeSet<&str>) {
        let roles = &self.intents;
        let intents = [&roles.issue, &roles.resolved, &roles.human, &roles.complaint]
            .into_iter()
            .flatten()
            .chain(self.rules.iter().flat_map(|r| &r.when.intent))
            .map(String::as_str)
            .collect();
        let sentiments = self
            .rules
            .iter()
            .flat_map(|r| &r.when.sentiment)
            .map(String::as_str)
            .collect();
        (intents, sentiments)
    }

    /// Which offers the rules allow in `s`, and which they forbid.
    pub fn evaluate(&self, s: &Situation<'_>) -> Verdict {
        let mut allowed: BTreeMap<&str, (i32, Vec<String>)> = BTreeMap::new();
        let mut forbidden = Vec::new();
        for r in self.rules.iter().filter(|r| r.when.holds(s)) {
            for id in &r.allow {
                let e = allowed.entry(id.as_str()).or_insert((i32::MIN, Vec::new()));
                e.0 = e.0.max(r.priority);
                e.1.push(r.name.clone());
            }
            for id in &r.forbid {
                forbidden.push((id.clone(), r.name.clone()));
            }
        }
        let mut eligible: Vec<Eligible> = allowed
            .into_iter()
            .filter(|(id, _)| !forbidden.iter().any(|(f, _)| f == id))
            .map(|(id, (priority, rules))| Eligible {
                offer: id.to_string(),
                priority,
                rules,
            })
            .collect();
        eligible.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.offer.cmp(&b.offer)));
        Verdict { eligible, forbidden }
    }
}

impl When {
    fn holds(&self, s: &Situation<'_>) -> bool {
        let any = |set: &BTreeSet<String>, v: Option<&str>| set.is_empty() || v.is_some_and(|v| set.contains(v));
        any(&self.intent, s.intent)
            && any(&self.sentiment, s.sentiment)
            && any(&self.tier, Some(s.tier))
            && self.min_lifetime_value.is_none_or(|m| s.lifetime_value >= m)
            && (self.channel.is_empty() || self.channel.contains(&s.channel))
            && (self.category.is_empty() || !self.category.is_disjoint(s.categories))
            && (self.product.is_empty() || !self.product.is_disjoint(s.products))
            && self.min_cart_value.is_none_or(|m| s.cart_value >= m)
            && self.max_cart_value.is_none_or(|m| s.cart_value <= m)
            && self.turn.is_none_or(|[a, b]| (a..=b).contains(&s.turn))
            && self.hours.is_none_or(|w| hours::contains(w, s.local_hour))
            && (self.stage.is_empty() || self.stage.contains(&s.stage))
            && self
                .attributes
                .iter()
                .all(|(k, allowed)| s.attributes.get(k).is_some_and(|v| allowed.contains(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = r#"
[[product]]
sku = "PH"
name_en = "phone"
category = "phone"
price = 3999
[[product]]
sku = "PB"
name_en = "power bank"
category = "accessory"
price = 129
[[product]]
sku = "WAR"
name_en = "warranty"
category = "service"
price = 299
[[offer]]
id = "care"
kind = "bundle"
items = ["WAR", "PB"]
price = 329
[[offer]]
id = "c20"
kind = "coupon"
amount = 20
min_spend = 100
[[offer]]
id = "acc10"
kind = "percent_off"
percent = 10
category = "accessory"
"#;

    const RULES: &str = r#"
tiers = ["regular", "gold"]
[intents]
issue = ["refund"]
resolved = ["thanks_bye"]
human = ["human_agent"]
complaint = ["complaint"]

[[rule]]
name = "battery"
allow = ["care"]
priority = 10
[rule.when]
intent = ["presales_question"]
category = ["phone"]
tier = ["gold"]
min_lifetime_value = "5000"
sentiment = ["neutral", "positive"]
attributes = { city = ["Shanghai", "上海"] }

[[rule]]
name = "price askers get a coupon"
allow = ["c20", "acc10"]
[rule.when]
intent = ["price"]
hours = [22, 8]

[[rule]]
name = "no accessories on the phone line"
forbid = ["acc10"]
[rule.when]
channel = ["phone"]
"#;

    fn setup(rules: &str) -> Result<Rules, StrategyError> {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("c.toml"), CATALOG).unwrap();
        std::fs::write(d.path().join("rules.toml"), rules).unwrap();
        let catalog = Catalog::load(&d.path().join("c.toml")).unwrap();
        let intents: Vec<String> = [
            "presales_question",
            "price",
            "refund",
            "thanks_bye",
            "human_agent",
            "complaint",
        ]
        .map(String::from)
        .to_vec();
        let sentiments: Vec<String> = ["negative", "neutral", "positive"].map(String::from).to_vec();
        Rules::load(
            &d.path().join("rules.toml"),
            &Vocabulary {
                intents: &intents,
                sentiments: &sentiments,
                catalog: &catalog,
            },
        )
    }

    fn offers(v: &Verdict) -> Vec<(&str, i32)> {
        v.eligible.iter().map(|e| (e.offer.as_str(), e.priority)).collect()
    }

    #[test]
    fn the_labels_the_rules_name_are_their_roles_and_conditions() {
        let rules = setup(RULES).unwrap();
        let (intents, sentiments) = rules.labels_named();
        assert_eq!(
            intents.into_iter().collect::<Vec<_>>(),
            [
                "complaint",
                "human_agent",
                "presales_question",
                "price",
                "refund",
                "thanks_bye"
            ]
        );
        assert_eq!(sentiments.into_iter().collect::<Vec<_>>(), ["neutral", "positive"]);
    }

    #[test]
    fn table_of_situations() {
        let rules = setup(RULES).unwrap();
        let phone: BTreeSet<String> = ["phone".to_string()].into();
        let attrs: BTreeMap<String, String> = [("city".to_string(), "上海".to_string())].into();
        let elsewhere: BTreeMap<String, String> = [("city".to_string(), "北京".to_string())].into();
        let nothing = BTreeMap::new();
        let none = BTreeSet::new();
        let base = Situation {
            intent: Some("presales_question"),
            sentiment: Some("neutral"),
            tier: "gold",
            lifetime_value: Cents(600_000),
            channel: Channel::Web,
            categories: &phone,
            products: &none,
            cart_value: Cents::ZERO,
            turn: 2,
            local_hour: 14,
            stage: Stage::Open,
            attributes: &attrs,
        };
        assert_eq!(offers(&rules.evaluate(&base)), vec![("care", 10)]);
        assert_eq!(rules.evaluate(&base).eligible[0].rules, vec!["battery"]);
        // Each condition of the battery rule, broken alone, stops it.
        for s in [
            Situation {
                tier: "regular",
                ..base.clone()
            },
            Situation {
                lifetime_value: Cents(499_999),
                ..base.clone()
            },
            Situation {
                sentiment: Some("negative"),
                ..base.clone()
            },
            Situation {
                categories: &none,
                ..base.clone()
            },
            Situation {
                intent: None,
                ..base.clone()
            },
            Situation {
                attributes: &elsewhere,
                ..base.clone()
            },
            Situation {
                attributes: &nothing,
                ..base.clone()
            },
        ] {
            assert!(rules.evaluate(&s).eligible.is_empty(), "{s:?}");
        }
        // Hours wrap past midnight: 22:00–07:59.
        let price = Situation {
            intent: Some("price"),
            ..base.clone()
        };
        assert!(rules.evaluate(&price).eligible.is_empty());
        let night = Situation {
            local_hour: 23,
            ..price.clone()
        };
        assert_eq!(offers(&rules.evaluate(&night)), vec![("acc10", 0), ("c20", 0)]);
        let early = Situation {
            local_hour: 7,
            ..price.clone()
        };
        assert_eq!(rules.evaluate(&early).eligible.len(), 2);
        let eight = Situation {
            local_hour: 8,
            ..price.clone()
        };
        assert!(rules.evaluate(&eight).eligible.is_empty());
        // Forbid wins over allow, and says which rule forbade.
        let by_phone = Situation {
            channel: Channel::Phone,
            ..night
        };
        let v = rules.evaluate(&by_phone);
        assert_eq!(offers(&v), vec![("c20", 0)]);
        assert_eq!(
            v.forbidden,
            vec![("acc10".to_string(), "no accessories on the phone line".to_string())]
        );
        assert_eq!(
            rules.intents().human.iter().next().map(String::as_str),
            Some("human_agent")
        );
    }

    #[test]
    fn typos_are_load_errors_with_line_and_field() {
        for (from, to, needle) in [
            (
                "intent = [\"price\"]",
                "intent = [\"prices\"]",
                "rule \"price askers get a coupon\".when.intent: unknown intent `prices`",
            ),
            (
                "allow = [\"care\"]",
                "allow = [\"cair\"]",
                "rule \"battery\".allow: unknown offer `cair`",
            ),
            ("tier = [\"gold\"]", "tier = [\"golden\"]", "unknown tier `golden`"),
            (
                "category = [\"phone\"]",
                "category = [\"phones\"]",
                "no product has category `phones`",
            ),
            (
                "sentiment = [\"neutral\", \"positive\"]",
                "sentiment = [\"calm\"]",
                "unknown sentiment `calm`",
            ),
            ("channel = [\"phone\"]", "channel = [\"fax\"]", "fax"),
            ("hours = [22, 8]", "hours = [22, 22]", "when.hours"),
            ("priority = 10", "priority = 10\ncolour = 1", "colour"),
            (
                "human = [\"human_agent\"]",
                "human = [\"humans\"]",
                "intents.human: unknown intent `humans`",
            ),
            (
                "name = \"battery\"",
                "name = \"no accessories on the phone line\"",
                "another rule has this name",
            ),
        ] {
            let text = RULES.replacen(from, to, 1);
            assert_ne!(text, RULES, "{from}");
            let err = setup(&text).unwrap_err().to_string();
            assert!(err.contains("rules.toml"), "{err}");
            assert!(err.contains(needle), "{from} → {to}: {err}");
        }
        let err = setup(&RULES.replacen("allow = [\"care\"]", "allow = [\"cair\"]", 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rules.toml:11:"), "the line of the key at fault: {err}");
        let err = setup(&RULES.replacen("name = \"battery\"", "name = \"no accessories on the phone line\"", 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rules.toml:29:"), "the second name's line: {err}");
    }
}
