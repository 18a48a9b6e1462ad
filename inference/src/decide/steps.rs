//! A decision as five steps, each a plain function unit-tested without a server:
//! **validate** the request into a [`DecideInput`] → **featurize** it (request features, channel,
//! understanding, embedding projection) under the names in `nudge_policy::context` → **choose**
//! with the policy → **record** it as the shared [`DecisionRecord`] → **answer** the caller.
//! The service (`super`) only runs them in order, awaits the encoder and the log, and maps
//! errors to gRPC codes.
use crate::error::RequestError;
use crate::nlu::Understanding;
use nudge_policy::{context as names, Choice, Policy};
use nudge_proto::v1 as pb;
use nudge_records::{DecisionRecord, LoggedOffer, DECISION_SCHEMA};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One candidate offer, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The caller's id, unique in the request.
    pub id: String,
    /// Its features by name.
    pub features: BTreeMap<String, f64>,
}

/// A validated request: every field checked, no protobuf types left.
#[derive(Debug, Clone, PartialEq)]
pub struct DecideInput {
    /// The caller's conversation id.
    pub conversation_id: String,
    /// The customer id as given (pseudonymised before it is logged).
    pub customer_id: String,
    /// web, app, phone…
    pub channel: String,
    /// Request features by name.
    pub context: BTreeMap<String, f64>,
    /// The text to understand in this call, if any.
    pub text: Option<String>,
    /// The caller's own understanding, when it sent one instead of a text.
    pub nlu: Option<Understanding>,
    /// NLU model for `text` ("" = the default).
    pub model: String,
    /// The offers to choose among, in request order.
    pub candidates: Vec<Candidate>,
}

/// An id field: at most 256 bytes, and not blank when `required`.
pub(crate) fn check_id(field: &str, v: &str, required: bool) -> Result<(), RequestError> {
    if required && v.trim().is_empty() {
        return Err(RequestError::invalid(field, "must not be empty"));
    }
    if v.len() > 256 {
        return Err(RequestError::invalid(field, "longer than 256 bytes"));
    }
    Ok(())
}

fn finite(field: String, v: f64) -> Result<f64, RequestError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(RequestError::invalid(field, "must be a finite number"))
    }
}

/// Step 1: every field checked, named in the error when wrong.
pub fn validate(req: pb::DecideRequest, max_candidates: usize) -> Result<DecideInput, RequestError> {
    check_id("conversation_id", &req.conversation_id, true)?;
    check_id("customer_id", &req.customer_id, false)?;
    check_id("channel", &req.channel, false)?;
    if req.candidates.len() > max_candidates {
        return Err(RequestError::invalid(
            "candidates",
            format!("{} offers exceeds the limit of {max_candidates}", req.candidates.len()),
        ));
    }
    let mut seen = HashSet::new();
    let mut candidates = Vec::with_capacity(req.candidates.len());
    for (i, c) in req.candidates.into_iter().enumerate() {
        check_id(&format!("candidates[{i}].id"), &c.id, true)?;
        if !seen.insert(c.id.clone()) {
            return Err(RequestError::invalid(
                format!("candidates[{i}].id"),
                format!("`{}` appears twice", c.id),
            ));
        }
        let features = c
            .features
            .into_iter()
            .map(|(k, v)| finite(format!("candidates[{i}].features[{k}]"), v).map(|v| (k, v)))
            .collect::<Result<_, _>>()?;
        candidates.push(Candidate { id: c.id, features });
    }
    let context = req
        .context
        .into_iter()
        .map(|(k, v)| finite(format!("context[{k}]"), v).map(|v| (k, v)))
        .collect::<Result<_, _>>()?;
    Ok(DecideInput {
        conversation_id: req.conversation_id,
        customer_id: req.customer_id,
        channel: req.channel,
        context,
        text: (!req.text.is_empty()).then_some(req.text),
        nlu: req.nlu.map(Understanding::from),
        model: req.model,
        candidates,
    })
}

/// Step 1b, once the serving policy is known: whether it can decide this request at all.
pub fn check_against(input: &DecideInput, policy: &Policy) -> Result<(), RequestError> {
    if input.candidates.is_empty() && !policy.schema.allow_none {
        return Err(RequestError::invalid(
            "candidates",
            "empty, and the serving policy cannot choose \"no offer\"",
        ));
    }
    Ok(())
}

/// Step 2: the context the policy sees, by feature name (see `nudge_policy::context`): the
/// caller's features, the channel, and what was understood. Conversations/Turn adds its own.
pub fn featurize(
    given: &BTreeMap<String, f64>,
    channel: &str,
    nlu: Option<&Understanding>,
    policy: &Policy,
) -> BTreeMap<String, f64> {
    let mut context = given.clone();
    if !channel.is_empty() {
        context.insert(names::channel(channel), 1.0);
    }
    if let Some(u) = nlu {
        if let Some(i) = &u.intent {
            context.insert(names::intent(&i.label), 1.0);
            context.insert(names::INTENT_CONFIDENCE.into(), i.confidence as f64);
            context.insert(names::OUT_OF_SCOPE.into(), if i.out_of_scope { 1.0 } else { 0.0 });
        }
        if let Some(s) = &u.sentiment {
            for ls in &s.scores {
                context.insert(names::sentiment(&ls.label), ls.score as f64);
            }
        }
        if let Some(p) = &policy.projection {
            if !u.embedding.is_empty() && p.ncols() == u.embedding.len() {
                for (i, row) in p.rows().into_iter().enumerate() {
                    let v: f64 = row.iter().zip(&u.embedding).map(|(a, b)| a * *b as f64).sum();
                    context.insert(names::embedding(i), v);
                }
            }
        }
    }
    context
}

/// Step 3: the policy's choice among the candidates (and "no offer" when allowed).
pub fn choose(
    policy: &Policy,
    context: &BTreeMap<String, f64>,
    candidates: &[Candidate],
    rng: &mut impl rand::Rng,
) -> Result<Choice, RequestError> {
    let ctx: HashMap<String, f64> = context.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let cvec = policy.schema.context_vector(&ctx);
    let offers: Vec<Vec<f64>> = candidates
        .iter()
        .map(|c| {
            policy
                .schema
                .offer_vector(&c.features.iter().map(|(k, v)| (k.clone(), *v)).collect())
        })
        .collect();
    let xs = policy.schema.options(&cvec, &offers);
    policy
        .choose(&xs, rng)
        .ok_or_else(|| RequestError::Internal("no options to choose from".into()))
}

/// Who and what made a decision, for its record.
pub struct Provenance<'a> {
    /// The new decision's id.
    pub decision_id: String,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Keyed hash of the customer id ("" when none).
    pub customer: String,
    /// The policy version that chose.
    pub policy_version: &'a str,
    /// The NLU model version that understood the text ("" when the caller sent its NLU).
    pub model_version: &'a str,
}

/// Step 4: the decision as the record the optimizer learns from.
pub fn record(
    input: &DecideInput,
    context: BTreeMap<String, f64>,
    choice: &Choice,
    who: Provenance<'_>,
) -> DecisionRecord {
    DecisionRecord {
        schema: DECISION_SCHEMA,
        decision_id: who.decision_id,
        time_ms: who.time_ms,
        conversation_id: input.conversation_id.clone(),
        customer: who.customer,
        channel: input.channel.clone(),
        policy_version: who.policy_version.to_string(),
        model_version: who.model_version.to_string(),
        context,
        candidates: input
            .candidates
            .iter()
            .map(|c| LoggedOffer {
                id: c.id.clone(),
                features: c.features.clone(),
            })
            .collect(),
        offer_id: input
            .candidates
            .get(choice.option)
            .map(|c| c.id.clone())
            .unwrap_or_default(),
        option: choice.option,
        propensity: choice.propensity,
        probabilities: choice.probabilities.clone(),
        scores: choice.scores.clone(),
        how: choice.how.to_string(),
    }
}

/// Step 5: the caller's answer, once the record is durable.
pub fn answer(
    record: &DecisionRecord,
    choice: &Choice,
    policy: &Policy,
    nlu: Option<Understanding>,
    trace: pb::DecisionTrace,
) -> pb::DecideResponse {
    let mut scores: Vec<pb::OfferScore> = record
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| pb::OfferScore {
            offer_id: c.id.clone(),
            score: choice.scores.get(i).copied().unwrap_or_default(),
            probability: choice.probabilities.get(i).copied().unwrap_or_default(),
        })
        .collect();
    if policy.schema.allow_none {
        let i = record.candidates.len();
        scores.push(pb::OfferScore {
            offer_id: String::new(),
            score: choice.scores.get(i).copied().unwrap_or_default(),
            probability: choice.probabilities.get(i).copied().unwrap_or_default(),
        });
    }
    pb::DecideResponse {
        decision_id: record.decision_id.clone(),
        offer_id: record.offer_id.clone(),
        propensity: choice.propensity,
        scores,
        policy_version: record.policy_version.clone(),
        nlu: nlu.map(Into::into),
        model_version: record.model_version.clone(),
        trace: Some(trace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nlu::{Intent, LabelScore, Sentiment};
    use nudge_policy::{Exploration, FeatureSchema, RewardModel};
    use rand::SeedableRng;

    fn request() -> pb::DecideRequest {
        pb::DecideRequest {
            conversation_id: "c1".into(),
            customer_id: "alice".into(),
            channel: "web".into(),
            context: [("basket".to_string(), 40.0)].into(),
            candidates: vec![
                pb::Offer {
                    id: "coupon".into(),
                    features: [("discount".to_string(), 0.1)].into(),
                },
                pb::Offer {
                    id: "bundle".into(),
                    features: [("discount".to_string(), 0.2)].into(),
                },
            ],
            ..Default::default()
        }
    }

    fn policy(allow_none: bool, theta: &[f64]) -> Policy {
        let schema = FeatureSchema {
            context: vec!["channel=web".into(), "intent=refund".into()],
            offer: vec!["discount".into()],
            allow_none,
        };
        let mut model = RewardModel::prior(schema.dim(), 1.0);
        model.theta = ndarray::Array1::from(theta.to_vec());
        Policy {
            model,
            schema,
            exploration: Exploration::EpsilonGreedy { epsilon: 0.0 },
            projection: Some(ndarray::Array2::from_shape_vec((1, 2), vec![1.0, -1.0]).unwrap()),
        }
    }

    #[test]
    fn validate_names_the_field_at_fault() {
        let mut r = request();
        r.conversation_id = " ".into();
        assert_eq!(
            validate(r, 8).unwrap_err(),
            RequestError::invalid("conversation_id", "must not be empty")
        );
        let mut r = request();
        r.candidates[1].id = "coupon".into();
        assert!(
            matches!(validate(r, 8), Err(RequestError::InvalidArgument { field, .. }) if field == "candidates[1].id")
        );
        let mut r = request();
        r.candidates[0].features.insert("margin".into(), f64::NAN);
        assert!(
            matches!(validate(r, 8), Err(RequestError::InvalidArgument { field, .. }) if field == "candidates[0].features[margin]")
        );
        let mut r = request();
        r.context.insert("x".into(), f64::INFINITY);
        assert!(matches!(validate(r, 8), Err(RequestError::InvalidArgument { field, .. }) if field == "context[x]"));
        assert!(
            matches!(validate(request(), 1), Err(RequestError::InvalidArgument { field, .. }) if field == "candidates")
        );
        let ok = validate(request(), 8).unwrap();
        assert_eq!(ok.text, None);
        assert_eq!(ok.candidates[1].features["discount"], 0.2);
        let mut r = request();
        r.candidates.clear();
        let empty = validate(r, 8).unwrap();
        assert!(check_against(&empty, &policy(false, &[0.0; 6])).is_err());
        assert!(check_against(&empty, &policy(true, &[0.0; 6])).is_ok());
    }

    #[test]
    fn featurize_uses_the_shared_names() {
        let input = validate(request(), 8).unwrap();
        let u = Understanding {
            intent: Some(Intent {
                label: "refund".into(),
                confidence: 0.75,
                out_of_scope: false,
                top_k: vec![],
            }),
            sentiment: Some(Sentiment {
                label: "negative".into(),
                score: 0.9,
                scores: vec![
                    LabelScore {
                        label: "negative".into(),
                        score: 0.9,
                    },
                    LabelScore {
                        label: "positive".into(),
                        score: 0.1,
                    },
                ],
            }),
            embedding: vec![0.5, 0.25],
            ..Default::default()
        };
        let ctx = featurize(&input.context, &input.channel, Some(&u), &policy(true, &[0.0; 6]));
        let want: BTreeMap<String, f64> = [
            ("basket", 40.0),
            ("channel=web", 1.0),
            ("intent=refund", 1.0),
            ("intent_confidence", 0.75),
            ("out_of_scope", 0.0),
            ("sentiment=negative", 0.9f32 as f64),
            ("sentiment=positive", 0.1f32 as f64),
            ("emb_0", 0.25),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
        assert_eq!(ctx, want);
        // Without NLU only the request and channel features remain.
        assert_eq!(
            featurize(&input.context, &input.channel, None, &policy(true, &[0.0; 6])).len(),
            2
        );
    }

    #[test]
    fn choose_record_and_answer_agree() {
        let input = validate(request(), 8).unwrap();
        // joint = [1, web, refund] ⊗ [1, discount]; reward grows with discount on the web.
        let p = policy(true, &[0.0, 0.0, 0.0, 10.0, 0.0, 0.0]);
        let ctx = featurize(&input.context, &input.channel, None, &p);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let choice = choose(&p, &ctx, &input.candidates, &mut rng).unwrap();
        assert_eq!(choice.option, 1, "the bigger discount wins: {:?}", choice.scores);
        let rec = record(
            &input,
            ctx.clone(),
            &choice,
            Provenance {
                decision_id: "d".into(),
                time_ms: 5,
                customer: "h".into(),
                policy_version: "v3",
                model_version: "",
            },
        );
        use nudge_records::Record;
        rec.check().unwrap();
        assert_eq!((rec.offer_id.as_str(), rec.option, rec.propensity), ("bundle", 1, 1.0));
        assert_eq!(rec.context, ctx);
        let a = answer(&rec, &choice, &p, None, pb::DecisionTrace::default());
        assert_eq!(a.offer_id, "bundle");
        assert_eq!(a.scores.len(), 3, "two candidates and no-offer");
        assert_eq!(a.scores[2].offer_id, "");
        assert!((a.scores[1].score - 2.0).abs() < 1e-12);
        assert_eq!(a.policy_version, "v3");
    }
}
