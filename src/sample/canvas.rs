//! The diffusion canvas of Algorithm 2 (reference-semantics §2.1, §2.3): token ids, which
//! positions are fixed (the reference's `src_mask`: prompt and suffix), and which are still masked.
//!
//! The masked state is a boolean per position, never `ids[i] == mask_id`: a generated position
//! whose chosen token happens to be the mask id is committed like any other (fixtures/README §3e).

use crate::error::{Error, Result};

/// One sequence being denoised. Masked positions hold `mask_id` in `ids` until they commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    /// The current `xt`: fixed tokens, committed tokens, and `mask_id` at masked positions.
    pub ids: Vec<u32>,
    /// 1 = given (prompt, suffix); never masked, never resampled.
    pub fixed: Vec<bool>,
    /// Still undecided. Starts as `!fixed`; a position leaves it once, when it commits.
    pub masked: Vec<bool>,
    /// The token position 0 receives at every step: the shift has no logit row before it, so the
    /// reference keeps the input token there (`x[:, :1]`; token 0 in unconditional mode).
    pub first: u32,
    pub mask_id: u32,
}

/// A piece of a canvas: given tokens or a span of masked positions.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Fixed(Vec<u32>),
    Masked(usize),
}

impl Canvas {
    /// A canvas from segments, in order. Fails on an empty canvas, an empty masked span, or the
    /// mask id inside a given segment (it would read as a hole the model is asked to fill).
    pub fn from_segments(segments: &[Segment], mask_id: u32) -> Result<Self> {
        let mut ids = Vec::new();
        let mut fixed = Vec::new();
        for (k, seg) in segments.iter().enumerate() {
            match seg {
                Segment::Fixed(tokens) => {
                    if let Some(p) = tokens.iter().position(|&t| t == mask_id) {
                        return Err(Error::Input(format!(
                            "the mask token (id {mask_id}) appears inside given text \
                             (segment {k}, token {p}); mark holes with a masked span instead"
                        )));
                    }
                    ids.extend_from_slice(tokens);
                    fixed.extend(std::iter::repeat_n(true, tokens.len()));
                }
                Segment::Masked(0) => {
                    return Err(Error::Input(format!(
                        "masked span {k} has length 0; an infill span needs at least one token"
                    )))
                }
                Segment::Masked(n) => {
                    ids.extend(std::iter::repeat_n(mask_id, *n));
                    fixed.extend(std::iter::repeat_n(false, *n));
                }
            }
        }
        if ids.is_empty() {
            return Err(Error::Input("the canvas is empty".into()));
        }
        // Position 0 keeps the input token; for an unconditional canvas that is token 0 (§2.3).
        let first = if fixed[0] { ids[0] } else { 0 };
        let masked = fixed.iter().map(|f| !f).collect();
        Ok(Self {
            ids,
            fixed,
            masked,
            first,
            mask_id,
        })
    }

    /// Prefix conditioning: `prompt` then `length` masked positions (unconditional if empty).
    pub fn prefix(prompt: &[u32], length: usize, mask_id: u32) -> Result<Self> {
        if length == 0 {
            return Err(Error::option("length", "must be at least 1"));
        }
        let mut segs = vec![];
        if !prompt.is_empty() {
            segs.push(Segment::Fixed(prompt.to_vec()));
        }
        segs.push(Segment::Masked(length));
        Self::from_segments(&segs, mask_id)
    }

    /// Infilling: `prefix`, `length` masked positions, `suffix`.
    pub fn infill(prefix: &[u32], length: usize, suffix: &[u32], mask_id: u32) -> Result<Self> {
        let segs = [
            Segment::Fixed(prefix.to_vec()),
            Segment::Masked(length),
            Segment::Fixed(suffix.to_vec()),
        ];
        let segs: Vec<Segment> = segs
            .into_iter()
            .filter(|s| !matches!(s, Segment::Fixed(t) if t.is_empty()))
            .collect();
        Self::from_segments(&segs, mask_id)
    }

    /// Resets a reference-style canvas: `input` ids and a fixed mask, as the fixtures store them
    /// (`*_input`, `*_src_mask`); non-fixed positions become masked whatever they hold.
    pub fn from_src_mask(input: &[u32], fixed: &[bool], mask_id: u32) -> Result<Self> {
        if input.len() != fixed.len() {
            return Err(Error::Input(format!(
                "{} ids but {} fixed flags",
                input.len(),
                fixed.len()
            )));
        }
        let mut segs = Vec::new();
        for (&t, &f) in input.iter().zip(fixed) {
            match (segs.last_mut(), f) {
                (Some(Segment::Fixed(v)), true) => v.push(t),
                (Some(Segment::Masked(n)), false) => *n += 1,
                (_, true) => segs.push(Segment::Fixed(vec![t])),
                (_, false) => segs.push(Segment::Masked(1)),
            }
        }
        Self::from_segments(&segs, mask_id)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn num_masked(&self) -> usize {
        self.masked.iter().filter(|&&m| m).count()
    }

    /// Positions the model generates (not fixed), in order.
    pub fn generated(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| !self.fixed[i]).collect()
    }

    /// What the reference sampler returns: the canvas without position 0 (§2.1).
    pub fn output(&self) -> &[u32] {
        &self.ids[1..]
    }
}

/// A template piece: literal text or a hole of a given token count.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePart {
    Text(String),
    Mask(usize),
}

/// Parses `"The cat <|mask:8|> on the mat."` into text and holes. `<|mask:N|>` needs N ≥ 1.
pub fn parse_template(template: &str) -> Result<Vec<TemplatePart>> {
    const OPEN: &str = "<|mask:";
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find(OPEN) {
        if start > 0 {
            parts.push(TemplatePart::Text(rest[..start].to_string()));
        }
        let after = &rest[start + OPEN.len()..];
        let end = after.find("|>").ok_or_else(|| {
            Error::Input(format!(
                "unclosed `{OPEN}` at byte {} of the template; write <|mask:N|>",
                template.len() - rest.len() + start
            ))
        })?;
        let n: usize = after[..end].trim().parse().map_err(|_| {
            Error::Input(format!(
                "`{OPEN}{}|>`: the span length must be a whole number of tokens",
                &after[..end]
            ))
        })?;
        if n == 0 {
            return Err(Error::Input(
                "`<|mask:0|>`: an infill span needs at least one token".into(),
            ));
        }
        parts.push(TemplatePart::Mask(n));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_string()));
    }
    if !parts.iter().any(|p| matches!(p, TemplatePart::Mask(_))) {
        return Err(Error::Input(
            "the template has no `<|mask:N|>` span to fill".into(),
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_spans() {
        let p = parse_template("The cat <|mask:8|> on the <|mask:2|>.").unwrap();
        assert_eq!(
            p,
            vec![
                TemplatePart::Text("The cat ".into()),
                TemplatePart::Mask(8),
                TemplatePart::Text(" on the ".into()),
                TemplatePart::Mask(2),
                TemplatePart::Text(".".into()),
            ]
        );
        for bad in ["a <|mask:0|>", "a <|mask:x|>", "a <|mask:3", "no holes"] {
            assert!(parse_template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canvases_and_their_errors() {
        let c = Canvas::infill(&[1, 2], 3, &[4], 7).unwrap();
        assert_eq!(c.ids, vec![1, 2, 7, 7, 7, 4]);
        assert_eq!(c.generated(), vec![2, 3, 4]);
        assert_eq!((c.first, c.num_masked()), (1, 3));
        let u = Canvas::prefix(&[], 4, 7).unwrap();
        assert_eq!((u.first, u.num_masked()), (0, 4));
        assert!(Canvas::infill(&[1], 0, &[2], 7).is_err());
        assert!(Canvas::prefix(&[1, 7], 3, 7)
            .unwrap_err()
            .to_string()
            .contains("mask token"));
        let r = Canvas::from_src_mask(&[1, 7, 7, 3], &[true, false, false, true], 7).unwrap();
        assert_eq!(r, Canvas::infill(&[1], 2, &[3], 7).unwrap());
    }
}
