//! Simulated conversations against a running server, over its public gRPC API only: each
//! customer message is a `Conversations/Turn`, the bot solving a problem is a `Nudge` with
//! trigger RESOLVED, every reaction to an offer is a `Conversations/Outcome` (so the server's
//! cool-downs, caps and opt-outs see it) and an `Optimizer/ReportOutcome` (so the optimizer
//! learns from it). Orders made after the conversation are reported after it, against the
//! decision that earned them; an order without an offer is credited to the conversation's last
//! decision. Conversations run `concurrency` at a time, each with its own seeded draws, so a
//! run is reproducible up to what the server's own exploration draws.
use crate::config::SimError;
use crate::messages::{Lang, Messages};
use crate::world::{BotTurn, Event, World};
use nudge_proto::v1 as pb;
use nudge_records::OutcomeKind;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tonic::transport::Channel;

/// What one simulated conversation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationResult {
    /// Index of the customer's segment.
    pub segment: usize,
    /// Bot turns taken.
    pub turns: u32,
    /// Decisions the server logged.
    pub decisions: u32,
    /// Offers shown.
    pub offers: u32,
    /// Offers accepted.
    pub accepted: u32,
    /// An order was placed.
    pub converted: bool,
    /// Its revenue, cents.
    pub revenue: i64,
    /// Its margin, cents.
    pub margin: i64,
    /// The customer complained.
    pub complaint: bool,
    /// The customer opted out of marketing.
    pub opted_out: bool,
    /// The server handed the conversation to a person.
    pub handoff: bool,
    /// The customer left annoyed.
    pub gone: bool,
    /// Offers made while the customer's problem was open.
    pub offers_while_open: u32,
    /// What the customer did after each bot turn (orders included), for valuing the
    /// conversation with any reward: see [`crate::world::totals`].
    pub turn_events: Vec<Vec<Event>>,
}

impl ConversationResult {
    /// The conversation's total reward, each turn's events valued by `reward`.
    pub fn value(&self, reward: &dyn Fn(&nudge_records::OutcomeTotals) -> f64) -> f64 {
        self.turn_events.iter().map(|e| reward(&crate::world::totals(e))).sum()
    }
}

/// Where to send the traffic.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's data listener, e.g. `http://127.0.0.1:50051`.
    pub server: String,
    /// The optimizer's listener; None reports to the server only.
    pub optimizer: Option<String>,
    /// Distinguishes runs: conversation and customer ids carry it.
    pub run: String,
}

struct Ctx {
    world: World,
    messages: Messages,
    conversations: pb::conversations_client::ConversationsClient<Channel>,
    optimizer: Option<pb::optimizer_client::OptimizerClient<Channel>>,
    run: String,
    seed: u64,
}

async fn connect(addr: &str) -> Result<Channel, SimError> {
    let err = |source| SimError::Connect {
        addr: addr.to_string(),
        source,
    };
    tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(err)?
        .connect()
        .await
        .map_err(err)
}

fn rpc(call: &'static str) -> impl Fn(tonic::Status) -> SimError {
    move |status| SimError::Rpc {
        call,
        status: Box::new(status),
    }
}

/// Runs `n` conversations, `concurrency` at a time, seeded by `seed`; results in index order.
pub async fn run(
    world: &World,
    messages: &Messages,
    target: &Target,
    n: usize,
    concurrency: usize,
    seed: u64,
) -> Result<Vec<ConversationResult>, SimError> {
    let channel = connect(&target.server).await?;
    let optimizer = match &target.optimizer {
        Some(a) => Some(pb::optimizer_client::OptimizerClient::new(connect(a).await?)),
        None => None,
    };
    let ctx = Arc::new(Ctx {
        world: world.clone(),
        messages: messages.clone(),
        conversations: pb::conversations_client::ConversationsClient::new(channel),
        optimizer,
        run: target.run.clone(),
        seed,
    });
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (ctx, next) = (ctx.clone(), next.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, SimError>(done);
                }
                done.push((i, converse(&ctx, i).await?));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(v)) => all.extend(v),
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(SimError::Rpc {
                    call: "worker",
                    status: Box::new(tonic::Status::internal(e.to_string())),
                })
            }
        }
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

fn proto_kind(k: OutcomeKind) -> pb::OutcomeKind {
    match k {
        OutcomeKind::Shown => pb::OutcomeKind::Shown,
        OutcomeKind::Click => pb::OutcomeKind::Click,
        OutcomeKind::AddToCart => pb::OutcomeKind::AddToCart,
        OutcomeKind::Convert => pb::OutcomeKind::Convert,
        OutcomeKind::Decline => pb::OutcomeKind::Decline,
        OutcomeKind::OptOut => pb::OutcomeKind::OptOut,
        OutcomeKind::Complaint => pb::OutcomeKind::Complaint,
    }
}

/// One conversation, start to end.
async fn converse(ctx: &Ctx, index: usize) -> Result<ConversationResult, SimError> {
    let w = &ctx.world;
    let mut rng = rand::rngs::StdRng::seed_from_u64(ctx.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index as u64);
    let total: f64 = w.cfg.segment.iter().map(|s| s.share).sum();
    let mut u = rng.random::<f64>() * total;
    let segment = w
        .cfg
        .segment
        .iter()
        .position(|s| {
            u -= s.share;
            u < 0.0
        })
        .unwrap_or(w.cfg.segment.len() - 1);
    let seg = &w.cfg.segment[segment];
    let lang = if rng.random_bool(seg.zh_share) {
        Lang::Zh
    } else {
        Lang::En
    };
    let conversation_id = format!("sim-{}-{index}", ctx.run);
    let customer_id = format!("customer-{}-{index}", ctx.run);
    let customer = pb::Customer {
        tier: seg.tier.clone(),
        lifetime_value_cents: seg.lifetime_value,
        marketing_consent: true,
        opted_out: false,
        attributes: Default::default(),
    };
    let cart: Vec<pb::CartLine> = seg
        .cart
        .iter()
        .map(|sku| pb::CartLine {
            sku: sku.clone(),
            qty: 1,
        })
        .collect();
    let mut client = ctx.conversations.clone();
    let mut result = ConversationResult {
        segment,
        ..Default::default()
    };
    let mut state = w.start(segment);
    let mut last_decision: Option<String> = None;
    let mut later: Vec<(String, String, Event)> = Vec::new();
    let thanks = vec![crate::messages::THANKS.to_string()];
    for turn in w.script(segment) {
        let response = match turn {
            BotTurn::Resolved => client
                .nudge(pb::NudgeRequest {
                    conversation_id: conversation_id.clone(),
                    customer_id: customer_id.clone(),
                    channel: seg.channel.clone(),
                    trigger: pb::nudge_request::Trigger::Resolved as i32,
                    customer: Some(customer.clone()),
                    cart: cart.clone(),
                })
                .await
                .map_err(rpc("Conversations/Nudge"))?,
            BotTurn::Open | BotTurn::Thanks => {
                let labels = if turn == BotTurn::Open { &seg.intents } else { &thanks };
                // Every label has messages in both languages: `Messages::load` checked it.
                let text = ctx
                    .messages
                    .draw(lang, labels, &mut rng)
                    .unwrap_or_default()
                    .to_string();
                client
                    .turn(pb::TurnRequest {
                        conversation_id: conversation_id.clone(),
                        customer_id: customer_id.clone(),
                        channel: seg.channel.clone(),
                        text,
                        customer: Some(customer.clone()),
                        cart: cart.clone(),
                        model: String::new(),
                    })
                    .await
                    .map_err(rpc("Conversations/Turn"))?
            }
        }
        .into_inner();
        result.turns += 1;
        let offer = response.offer.unwrap_or_default();
        let decision = (!offer.decision_id.is_empty()).then(|| offer.decision_id.clone());
        if decision.is_some() {
            result.decisions += 1;
            last_decision.clone_from(&decision);
        }
        let offered = (!offer.offer_id.is_empty()).then_some(offer.offer_id.as_str());
        if offered.is_some() {
            result.offers += 1;
            if turn == BotTurn::Open && seg.need == crate::config::Need::Service {
                result.offers_while_open += 1;
            }
        }
        let branches = w.branches(segment, &state, offered);
        let mut u = rng.random::<f64>();
        let branch = branches
            .iter()
            .find(|b| {
                u -= b.p;
                u < 0.0
            })
            .or(branches.last())
            .cloned();
        let Some(branch) = branch else { break };
        result.turn_events.push(branch.events.clone());
        for e in &branch.events {
            match e.kind {
                OutcomeKind::AddToCart => result.accepted += 1,
                OutcomeKind::Convert => {
                    result.converted = true;
                    result.revenue += e.revenue;
                    result.margin += e.margin;
                }
                OutcomeKind::Complaint => result.complaint = true,
                OutcomeKind::OptOut => result.opted_out = true,
                _ => {}
            }
            // Orders come after the conversation; the rest is the customer's answer now.
            let credited = decision.clone().or_else(|| last_decision.clone());
            let Some(d) = credited else { continue };
            let event_id = format!("{d}-{}-{}", e.kind.counted_as().name(), result.turns);
            if e.kind == OutcomeKind::Convert {
                later.push((d, event_id, *e));
            } else {
                let to_server = offered.is_some() && decision.is_some();
                report(
                    ctx,
                    &conversation_id,
                    &customer_id,
                    (&d, &event_id),
                    to_server,
                    *e,
                    &mut client,
                )
                .await?;
            }
        }
        result.gone = branch.gone;
        let handoff = response.handoff.is_some();
        match branch.next {
            Some(n) if !handoff => state = n,
            _ => {
                result.handoff = handoff;
                break;
            }
        }
    }
    for (d, event_id, e) in later {
        report(
            ctx,
            &conversation_id,
            &customer_id,
            (&d, &event_id),
            false,
            e,
            &mut client,
        )
        .await?;
    }
    Ok(result)
}

/// Reports one event: to the server when it answers an offer shown now, always to the optimizer.
async fn report(
    ctx: &Ctx,
    conversation_id: &str,
    customer_id: &str,
    (decision_id, event_id): (&str, &str),
    to_server: bool,
    e: Event,
    client: &mut pb::conversations_client::ConversationsClient<Channel>,
) -> Result<(), SimError> {
    let kind = proto_kind(e.kind) as i32;
    if to_server {
        client
            .outcome(pb::ConversationOutcomeRequest {
                conversation_id: conversation_id.to_string(),
                customer_id: customer_id.to_string(),
                decision_id: decision_id.to_string(),
                kind,
                revenue_cents: if e.kind == OutcomeKind::Convert {
                    e.revenue.max(0)
                } else {
                    0
                },
            })
            .await
            .map_err(rpc("Conversations/Outcome"))?;
    }
    if let Some(o) = &ctx.optimizer {
        o.clone()
            .report_outcome(pb::ReportOutcomeRequest {
                event_id: event_id.to_string(),
                decision_id: decision_id.to_string(),
                kind,
                revenue: e.revenue as f64 / 100.0,
                margin: e.margin as f64 / 100.0,
                time_unix_ms: 0,
            })
            .await
            .map_err(rpc("Optimizer/ReportOutcome"))?;
    }
    Ok(())
}
