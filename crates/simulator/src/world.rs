//! The customers' hidden side: a small Markov decision process per segment, written once as
//! [`World::branches`] and used twice: the simulated customers draw from it, and
//! [`World::optimum`] solves it exactly by dynamic programming. Because both read the same
//! function, the optimum is the optimum of what is simulated, and regret is measurable.
//!
//! A conversation is a script of bot turns. A service customer writes `turns` messages about
//! the problem, the bot solves it (a `Nudge` with trigger RESOLVED), the customer says thanks;
//! a purchase customer writes `turns` browsing messages. At every bot turn the server may make
//! an offer. The customer accepts with `appeal × (0.5 + price_sensitivity)`, times
//! `accept_while_open` while a problem is open; an accepted offer becomes an order with
//! `convert_after_accept`. A declined offer costs patience (more while a problem is open, where
//! it may also make the customer opt out); when patience runs out the customer leaves, maybe
//! complaining. A customer who leaves no earlier and accepted nothing buys the cart at list
//! price with `base_conversion × (1 − price_sensitivity)`. The server's caps (offers per
//! conversation, the cool-down after a decline) and opt-outs bound what can be offered; the
//! optimum respects them. The server sees none of this: only the messages, through its NLU.
use crate::config::{Need, SimConfig};
use nudge_records::{OutcomeKind, OutcomeTotals, RewardField};
use std::collections::HashMap;

/// A bot turn of the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotTurn {
    /// The customer writes about the open need (service problem or browsing).
    Open,
    /// The bot solved the problem (sent as a `Nudge` with trigger RESOLVED).
    Resolved,
    /// The customer thanks the bot.
    Thanks,
}

/// What the customer knows and the server does not, at a bot turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Latent {
    /// Index of the bot turn in the script.
    pub at: u8,
    /// Patience left.
    pub patience: u8,
    /// Offers made so far in the conversation.
    pub offers: u8,
    /// Bot turns left in the cool-down after a decline.
    pub cooldown: u8,
    /// An offer was accepted.
    pub accepted: bool,
    /// The customer opted out of marketing.
    pub opted_out: bool,
}

/// One outcome event, as reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: OutcomeKind,
    /// Revenue of a conversion, cents.
    pub revenue: i64,
    /// Margin of a conversion, cents.
    pub margin: i64,
}

impl Event {
    fn of(kind: OutcomeKind) -> Event {
        Event {
            kind,
            revenue: 0,
            margin: 0,
        }
    }
}

/// One way a bot turn can go.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    /// Its probability.
    pub p: f64,
    /// What the customer does (reported as outcomes of the turn's decision).
    pub events: Vec<Event>,
    /// The state at the next bot turn; `None` when the conversation ends.
    pub next: Option<Latent>,
    /// The customer left annoyed.
    pub gone: bool,
}

/// Revenue and margin, cents, of an order made through each offer and of the cart at list
/// price, per segment: taken from the prices the server quoted.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    /// `(segment, offer) → (revenue, margin)` of an order made through the offer.
    pub offers: HashMap<(usize, String), (i64, i64)>,
    /// `segment → (revenue, margin)` of the cart bought at list price.
    pub base: HashMap<usize, (i64, i64)>,
}

/// The customers of one configuration.
#[derive(Debug, Clone)]
pub struct World {
    /// The configuration.
    pub cfg: SimConfig,
    /// What orders earn, priced from the server's catalog.
    pub prices: Prices,
    /// Offers per conversation the server allows.
    pub max_offers: u8,
    /// Bot turns without an offer after a decline.
    pub cooldown: u8,
}

impl World {
    /// The world of `cfg`, with the caps of its server's guardrails.
    pub fn new(cfg: SimConfig) -> Result<World, crate::SimError> {
        let g = cfg.guardrails()?;
        let prices = prices(&cfg)?;
        Ok(World {
            prices,
            max_offers: u8::try_from(g.max_offers_per_conversation).unwrap_or(u8::MAX),
            cooldown: u8::try_from(g.cooldown_turns_after_decline).unwrap_or(u8::MAX),
            cfg,
        })
    }

    /// The bot turns of a segment's conversation.
    pub fn script(&self, segment: usize) -> Vec<BotTurn> {
        let s = &self.cfg.segment[segment];
        let mut v = vec![BotTurn::Open; usize::from(s.turns)];
        if s.need == Need::Service {
            v.extend([BotTurn::Resolved, BotTurn::Thanks]);
        }
        v
    }

    /// Where a segment's conversation starts.
    pub fn start(&self, segment: usize) -> Latent {
        Latent {
            at: 0,
            patience: self.cfg.segment[segment].patience,
            offers: 0,
            cooldown: 0,
            accepted: false,
            opted_out: false,
        }
    }

    /// Whether the server may make an offer in `s` (its caps and the customer's opt-out).
    pub fn may_offer(&self, s: &Latent) -> bool {
        !s.opted_out && s.offers < self.max_offers && s.cooldown == 0
    }

    /// Chance the segment's customer accepts `offer` at the bot turn of `s`.
    pub fn accept_probability(&self, segment: usize, s: &Latent, offer: &str) -> f64 {
        let seg = &self.cfg.segment[segment];
        if s.accepted {
            return 0.0;
        }
        let appeal = self.cfg.offers.get(offer).map_or(0.0, |a| a.appeal);
        let open = seg.need == Need::Service && self.script(segment)[usize::from(s.at)] == BotTurn::Open;
        let moment = if open { self.cfg.reaction.accept_while_open } else { 1.0 };
        (appeal * (0.5 + seg.price_sensitivity) * moment).clamp(0.0, 1.0)
    }

    /// Every way the bot turn of `s` can go when the server offers `offer` (or nothing), with
    /// the conversation's end (and the cart bought at list price, or not) folded into the last
    /// turn's branches.
    pub fn branches(&self, segment: usize, s: &Latent, offer: Option<&str>) -> Vec<Branch> {
        let seg = &self.cfg.segment[segment];
        let r = &self.cfg.reaction;
        let script = self.script(segment);
        let open = seg.need == Need::Service && script[usize::from(s.at)] == BotTurn::Open;
        let mut next = *s;
        next.at += 1;
        next.cooldown = s.cooldown.saturating_sub(1);
        let mut out = Vec::new();
        match offer {
            None => out.push(Branch {
                p: 1.0,
                events: vec![],
                next: Some(next),
                gone: false,
            }),
            Some(id) => {
                next.offers = next.offers.saturating_add(1);
                let pa = self.accept_probability(segment, s, id);
                let (rev, margin) = self
                    .prices
                    .offers
                    .get(&(segment, id.to_string()))
                    .copied()
                    .unwrap_or((0, 0));
                let accepted = Latent { accepted: true, ..next };
                let pc = r.convert_after_accept;
                let order = Event {
                    kind: OutcomeKind::Convert,
                    revenue: rev,
                    margin,
                };
                let take = Event::of(OutcomeKind::AddToCart);
                out.push(Branch {
                    p: pa * pc,
                    events: vec![take, order],
                    next: Some(accepted),
                    gone: false,
                });
                out.push(Branch {
                    p: pa * (1.0 - pc),
                    events: vec![take],
                    next: Some(accepted),
                    gone: false,
                });
                let cost = if open { r.annoyance_while_open } else { r.annoyance };
                let mut declined = next;
                declined.patience = s.patience.saturating_sub(cost);
                declined.cooldown = self.cooldown;
                let po = if open { r.opt_out_while_open } else { 0.0 };
                for (opt_out, p_opt) in [(true, po), (false, 1.0 - po)] {
                    let mut d = declined;
                    d.opted_out |= opt_out;
                    let mut events = vec![Event::of(OutcomeKind::Decline)];
                    if opt_out {
                        events.push(Event::of(OutcomeKind::OptOut));
                    }
                    if d.patience == 0 {
                        let pq = r.complaint_when_gone;
                        let mut with = events.clone();
                        with.push(Event::of(OutcomeKind::Complaint));
                        out.push(Branch {
                            p: (1.0 - pa) * p_opt * pq,
                            events: with,
                            next: None,
                            gone: true,
                        });
                        out.push(Branch {
                            p: (1.0 - pa) * p_opt * (1.0 - pq),
                            events,
                            next: None,
                            gone: true,
                        });
                    } else {
                        out.push(Branch {
                            p: (1.0 - pa) * p_opt,
                            events,
                            next: Some(d),
                            gone: false,
                        });
                    }
                }
            }
        }
        // The end of the script: the customer buys the cart at list price, or not.
        let last = usize::from(s.at) + 1 == script.len();
        if last {
            let pb = seg.base_conversion * (1.0 - seg.price_sensitivity);
            let (rev, margin) = self.prices.base.get(&segment).copied().unwrap_or((0, 0));
            let mut ended = Vec::with_capacity(out.len() * 2);
            for b in out {
                let Some(n) = b.next else {
                    ended.push(b);
                    continue;
                };
                let buys = if n.accepted { 0.0 } else { pb };
                let mut with = b.events.clone();
                with.push(Event {
                    kind: OutcomeKind::Convert,
                    revenue: rev,
                    margin,
                });
                ended.push(Branch {
                    p: b.p * buys,
                    events: with,
                    next: None,
                    gone: false,
                });
                ended.push(Branch {
                    p: b.p * (1.0 - buys),
                    next: None,
                    ..b
                });
            }
            out = ended;
        }
        out.retain(|b| b.p > 0.0);
        out
    }

    /// The offers a server can make (those the configuration gives an appeal), in id order.
    pub fn offer_ids(&self) -> Vec<&str> {
        self.cfg.offers.keys().map(String::as_str).collect()
    }

    /// The best expected total reward per conversation of a segment, with `reward` valuing a
    /// turn's events (exact for rewards linear in the outcome fields, as they are summed per
    /// turn), and the best action (`None`: no offer) in every reachable state.
    pub fn optimum(
        &self,
        segment: usize,
        reward: &dyn Fn(&OutcomeTotals) -> f64,
    ) -> (f64, HashMap<Latent, Option<String>>) {
        let mut memo: HashMap<Latent, (f64, Option<String>)> = HashMap::new();
        let v = self.solve(segment, &self.start(segment), reward, &mut memo);
        (v, memo.into_iter().map(|(k, (_, a))| (k, a)).collect())
    }

    /// Expected total reward of a fixed policy (`choose(state) → offer`), by the same recursion.
    pub fn value_of(
        &self,
        segment: usize,
        reward: &dyn Fn(&OutcomeTotals) -> f64,
        choose: &dyn Fn(&Latent) -> Option<String>,
    ) -> f64 {
        fn go(
            w: &World,
            seg: usize,
            s: &Latent,
            reward: &dyn Fn(&OutcomeTotals) -> f64,
            choose: &dyn Fn(&Latent) -> Option<String>,
        ) -> f64 {
            let a = if w.may_offer(s) { choose(s) } else { None };
            w.branches(seg, s, a.as_deref())
                .iter()
                .map(|b| b.p * (reward(&totals(&b.events)) + b.next.map_or(0.0, |n| go(w, seg, &n, reward, choose))))
                .sum()
        }
        go(self, segment, &self.start(segment), reward, choose)
    }

    fn solve(
        &self,
        segment: usize,
        s: &Latent,
        reward: &dyn Fn(&OutcomeTotals) -> f64,
        memo: &mut HashMap<Latent, (f64, Option<String>)>,
    ) -> f64 {
        if let Some((v, _)) = memo.get(s) {
            return *v;
        }
        let mut actions: Vec<Option<String>> = vec![None];
        if self.may_offer(s) {
            actions.extend(self.offer_ids().into_iter().map(|o| Some(o.to_string())));
        }
        let mut best = (f64::NEG_INFINITY, None);
        for a in actions {
            let mut v = 0.0;
            for b in self.branches(segment, s, a.as_deref()) {
                let future = match b.next {
                    Some(n) => self.solve(segment, &n, reward, memo),
                    None => 0.0,
                };
                v += b.p * (reward(&totals(&b.events)) + future);
            }
            if v > best.0 + 1e-12 {
                best = (v, a);
            }
        }
        memo.insert(*s, best.clone());
        best.0
    }
}

/// Quotes every segment's cart alone and with each offer, as the server would.
fn prices(cfg: &SimConfig) -> Result<Prices, crate::SimError> {
    use nudge_strategy::pricing::{quote, CartLine};
    let bad = |reason: String| crate::SimError::Config {
        path: cfg.catalog.clone(),
        reason,
    };
    let catalog = nudge_strategy::Catalog::load(&cfg.catalog).map_err(|e| bad(e.to_string()))?;
    let money = |list: i64, fin: i64| (fin, fin - (list as f64 * cfg.cost_share).round() as i64);
    let mut p = Prices::default();
    for (i, s) in cfg.segment.iter().enumerate() {
        let cart: Vec<CartLine> = s
            .cart
            .iter()
            .map(|sku| CartLine {
                sku: sku.clone(),
                qty: 1,
            })
            .collect();
        let q = quote(&catalog, &cart, &[]).map_err(|e| bad(format!("segment `{}`.cart: {e}", s.name)))?;
        p.base.insert(i, money(q.list_price.0, q.final_price.0));
        for id in cfg.offers.keys() {
            let o = catalog
                .offer(id)
                .ok_or_else(|| bad(format!("offers.{id}: the catalog has no such offer")))?;
            // An offer that does not apply to this cart is never made to it: priced at nothing.
            if let Ok(q) = quote(&catalog, &cart, &[o]) {
                p.offers.insert((i, id.clone()), money(q.list_price.0, q.final_price.0));
            }
        }
    }
    Ok(p)
}

/// The outcome totals of a turn's events (money in currency units, as reported).
pub fn totals(events: &[Event]) -> OutcomeTotals {
    let mut t = OutcomeTotals::default();
    for e in events {
        let f = e.kind.counted_as();
        t.set(f, t.get(f) + 1.0);
        if e.kind == OutcomeKind::Convert {
            t.set(
                RewardField::Revenue,
                t.get(RewardField::Revenue) + e.revenue as f64 / 100.0,
            );
            t.set(
                RewardField::Margin,
                t.get(RewardField::Margin) + e.margin as f64 / 100.0,
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::path::Path;

    fn world() -> World {
        World::new(SimConfig::load(Path::new("../../examples/sim/sim.toml")).unwrap()).unwrap()
    }

    fn reward(t: &OutcomeTotals) -> f64 {
        t.get(RewardField::Margin) - 300.0 * t.get(RewardField::Complaint) - 200.0 * t.get(RewardField::OptOut)
    }

    #[test]
    fn prices_are_the_servers_quotes() {
        let w = world();
        // X1 at 3999.00, cost 60 %: the coupon takes 100 off, the warranty adds 149 (list 199).
        assert_eq!(w.prices.base[&0], (399_900, 399_900 - 239_940));
        assert_eq!(
            w.prices.offers[&(0, "thanks_coupon".to_string())],
            (389_900, 389_900 - 239_940)
        );
        assert_eq!(
            w.prices.offers[&(0, "warranty_1y".to_string())],
            (414_800, 414_800 - 251_880)
        );
        assert_eq!((w.max_offers, w.cooldown), (2, 3));
    }

    #[test]
    fn branches_are_distributions_and_the_optimum_waits_for_the_resolution() {
        let w = world();
        for seg in 0..w.cfg.segment.len() {
            let (best, policy) = w.optimum(seg, &reward);
            // Every reachable state's branches sum to 1, for every action.
            for s in policy.keys() {
                for a in [None, Some("thanks_coupon"), Some("warranty_1y"), Some("spend_save")] {
                    let p: f64 = w.branches(seg, s, a).iter().map(|b| b.p).sum();
                    assert!((p - 1.0).abs() < 1e-12, "{s:?} {a:?}: {p}");
                }
            }
            // The optimum's own value, by the same recursion, is the optimum.
            let own = w.value_of(seg, &reward, &|s| policy.get(s).cloned().flatten());
            assert!((own - best).abs() < 1e-9);
            // No other fixed policy does better: offering the coupon at the first chance, or never.
            let first = w.value_of(seg, &reward, &|_| Some("thanks_coupon".into()));
            let never = w.value_of(seg, &reward, &|_| None);
            assert!(best >= first && best >= never, "{best} {first} {never}");
            // Monte-Carlo of the optimal policy through the same branches agrees.
            let mut rng = rand::rngs::StdRng::seed_from_u64(seg as u64);
            let n = 40_000;
            let mut total = 0.0;
            for _ in 0..n {
                let mut s = w.start(seg);
                loop {
                    let a = if w.may_offer(&s) {
                        policy.get(&s).cloned().flatten()
                    } else {
                        None
                    };
                    let bs = w.branches(seg, &s, a.as_deref());
                    let mut u = rng.random::<f64>();
                    let b = bs.iter().find(|b| {
                        u -= b.p;
                        u < 0.0
                    });
                    let b = b.unwrap_or(bs.last().unwrap());
                    total += reward(&totals(&b.events));
                    match b.next {
                        Some(n) => s = n,
                        None => break,
                    }
                }
            }
            let mc = total / n as f64;
            assert!(
                (mc - best).abs() < 0.03 * best.abs() + 5.0,
                "segment {seg}: {mc} vs {best}"
            );
            eprintln!("segment {seg}: optimum {best:.1}, coupon at once {first:.1}, never {never:.1}");
        }
        // After-sales customers: nothing while the problem is open, the coupon once it is solved
        // (at the resolution or at the thanks: the same value, a decline blocks the other).
        let (best, policy) = w.optimum(0, &reward);
        assert_eq!(policy[&w.start(0)], None);
        let script = w.script(0);
        let wait = w.value_of(0, &reward, &|s| {
            (script[usize::from(s.at)] != BotTurn::Open).then(|| "thanks_coupon".to_string())
        });
        assert!((wait - best).abs() < 1e-9, "{wait} vs {best}");
        // Shoppers: the coupon at once is optimal (timing does not matter to them).
        let (best, _) = w.optimum(1, &reward);
        let first = w.value_of(1, &reward, &|_| Some("thanks_coupon".into()));
        assert!((first - best).abs() < 1e-9, "{first} vs {best}");
    }
}
