//! What the server understood of one text, as a domain type: built from head probabilities by
//! the model core's rules, used by `Understand`, `Decide` and the decision log, and turned into
//! protobuf only at the edge (`From<Understanding> for pb::Understanding`).
use nudge_model::{NluModel, NluOutput};
use nudge_proto::v1 as pb;

/// One label and its probability.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    /// The label.
    pub label: String,
    /// Its probability.
    pub score: f32,
}

/// The intent head's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    /// The best in-scope label, or the out-of-scope label when out of scope.
    pub label: String,
    /// Probability of the best in-scope label.
    pub confidence: f32,
    /// The out-of-scope rule fired.
    pub out_of_scope: bool,
    /// The most probable labels, best first.
    pub top_k: Vec<LabelScore>,
}

/// The sentiment head's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sentiment {
    /// The most probable label.
    pub label: String,
    /// Its probability.
    pub score: f32,
    /// Every label's probability, in the bundle's label order.
    pub scores: Vec<LabelScore>,
}

/// Everything understood of one text.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Understanding {
    /// Present when the model has an intent head.
    pub intent: Option<Intent>,
    /// Present when the model has a sentiment head.
    pub sentiment: Option<Sentiment>,
    /// The sentence vector (empty when not asked for).
    pub embedding: Vec<f32>,
    /// The text was cut at the model's token cap.
    pub truncated: bool,
    /// Tokens the model saw.
    pub token_count: u32,
}

/// Head probabilities → labels, with the bundle's out-of-scope rule (`IntentSpec::verdict`).
pub fn interpret(
    model: &NluModel,
    out: &NluOutput,
    top_k: usize,
    with_embedding: bool,
    truncated: bool,
    token_count: u32,
) -> Understanding {
    let intent = model.intent_spec().zip(out.intent.as_deref()).map(|(spec, p)| {
        let v = spec.verdict(p);
        let mut ranked: Vec<(usize, f32)> = p.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        Intent {
            label: spec.answer_label(&v).to_string(),
            confidence: v.confidence,
            out_of_scope: v.out_of_scope,
            top_k: ranked
                .iter()
                .take(top_k)
                .filter_map(|(i, s)| {
                    Some(LabelScore {
                        label: spec.labels.get(*i)?.clone(),
                        score: *s,
                    })
                })
                .collect(),
        }
    });
    let sentiment = model
        .sentiment_labels()
        .zip(out.sentiment.as_deref())
        .and_then(|(labels, p)| {
            let best = p.iter().copied().enumerate().max_by(|a, b| a.1.total_cmp(&b.1))?;
            Some(Sentiment {
                label: labels.get(best.0)?.clone(),
                score: best.1,
                scores: labels
                    .iter()
                    .zip(p)
                    .map(|(l, s)| LabelScore {
                        label: l.clone(),
                        score: *s,
                    })
                    .collect(),
            })
        });
    Understanding {
        intent,
        sentiment,
        embedding: if with_embedding {
            out.embedding.clone()
        } else {
            Vec::new()
        },
        truncated,
        token_count,
    }
}

impl From<LabelScore> for pb::LabelScore {
    fn from(l: LabelScore) -> Self {
        pb::LabelScore {
            label: l.label,
            score: l.score,
        }
    }
}

impl From<pb::LabelScore> for LabelScore {
    fn from(l: pb::LabelScore) -> Self {
        LabelScore {
            label: l.label,
            score: l.score,
        }
    }
}

impl From<Understanding> for pb::Understanding {
    fn from(u: Understanding) -> Self {
        pb::Understanding {
            intent: u.intent.map(|i| pb::Intent {
                label: i.label,
                confidence: i.confidence,
                out_of_scope: i.out_of_scope,
                top_k: i.top_k.into_iter().map(Into::into).collect(),
            }),
            sentiment: u.sentiment.map(|s| pb::Sentiment {
                label: s.label,
                score: s.score,
                scores: s.scores.into_iter().map(Into::into).collect(),
            }),
            embedding: u.embedding,
            truncated: u.truncated,
            token_count: u.token_count,
        }
    }
}

/// A caller's own NLU result (Decide with `nlu` instead of `text`).
impl From<pb::Understanding> for Understanding {
    fn from(u: pb::Understanding) -> Self {
        Understanding {
            intent: u.intent.map(|i| Intent {
                label: i.label,
                confidence: i.confidence,
                out_of_scope: i.out_of_scope,
                top_k: i.top_k.into_iter().map(Into::into).collect(),
            }),
            sentiment: u.sentiment.map(|s| Sentiment {
                label: s.label,
                score: s.score,
                scores: s.scores.into_iter().map(Into::into).collect(),
            }),
            embedding: u.embedding,
            truncated: u.truncated,
            token_count: u.token_count,
        }
    }
}

/// One text through a locally loaded model, without a server (`nudge understand`).
pub fn understand_local(
    model: &NluModel,
    text: &str,
    top_k: usize,
    with_embedding: bool,
) -> Result<Understanding, crate::RequestError> {
    use crate::RequestError;
    if text.trim().is_empty() {
        return Err(RequestError::invalid("text", "must not be empty or whitespace only"));
    }
    let t = model
        .tokenize(text)
        .map_err(|e| RequestError::invalid("text", e.to_string()))?;
    let out = model
        .run(&[&t.ids])?
        .into_iter()
        .next()
        .ok_or_else(|| RequestError::Internal("no output".into()))?;
    Ok(interpret(
        model,
        &out,
        top_k,
        with_embedding,
        t.truncated,
        t.ids.len() as u32,
    ))
}
