//! The families' own samplers as users ask for them: which sampler and shift a model family
//! uses when none is named, and the settings only LLaDA's `generate()` and Dream's
//! `diffusion_generate()` have (`llada`, `dream`).

use serde::Deserialize;

use super::dream::{Alg, Dream};
use super::llada::{EosGuards, Llada, Remasking};
use super::options::Sampler;
use super::request::SamplerName;
use crate::diffusion::shift::Shift;
use crate::error::{Error, OptionMessage, Result};
use crate::model::Architecture;

/// How a model family samples when no sampler is named, and the shift it was trained with
/// (`Shift` for the alignment): DiffuGPT and DiffuLLaMA use the reference's top-k confidence
/// sampler and `Next`; LLaDA and Dream their own samplers, `Same` and `Concat`.
pub fn family_sampler(arch: Architecture) -> (SamplerName, Shift) {
    let sampler = match arch {
        Architecture::Gpt2 | Architecture::Llama => SamplerName::TopkConfidence,
        Architecture::Llada => SamplerName::Llada,
        Architecture::Dream => SamplerName::Dream,
    };
    (sampler, Shift::for_sampling(arch))
}

/// The families' own sampler settings, each valid only with its sampler (`--remasking`,
/// `--cfg-scale`, `--logits-eos-inf` and `--confidence-eos-eot-inf` with llada; `--alg`,
/// `--alg-temp` and `--eps` with dream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct FamilySettings {
    pub remasking: Option<Remasking>,
    pub cfg_scale: Option<f32>,
    pub logits_eos_inf: Option<bool>,
    pub confidence_eos_eot_inf: Option<bool>,
    pub alg: Option<Alg>,
    pub alg_temp: Option<f32>,
    pub eps: Option<f32>,
}

impl FamilySettings {
    /// `sampler` with these settings; an error names a setting its sampler does not have.
    pub(super) fn apply(
        &self,
        sampler: Sampler,
        top_p: Option<f32>,
        top_k: Option<usize>,
    ) -> Result<Sampler> {
        // Each setting, whether it is given, and the sampler it belongs to.
        let given = [
            ("remasking", self.remasking.is_some(), SamplerName::Llada),
            ("cfg_scale", self.cfg_scale.is_some(), SamplerName::Llada),
            (
                "logits_eos_inf",
                self.logits_eos_inf.is_some(),
                SamplerName::Llada,
            ),
            (
                "confidence_eos_eot_inf",
                self.confidence_eos_eot_inf.is_some(),
                SamplerName::Llada,
            ),
            ("alg", self.alg.is_some(), SamplerName::Dream),
            ("alg_temp", self.alg_temp.is_some(), SamplerName::Dream),
            ("eps", self.eps.is_some(), SamplerName::Dream),
        ];
        let running = match sampler {
            Sampler::Llada(_) => Some(SamplerName::Llada),
            Sampler::Dream(_) => Some(SamplerName::Dream),
            _ => None,
        };
        if let Some((name, _, owner)) = given.iter().find(|s| s.1 && Some(s.2) != running) {
            return Err(Error::InvalidOption(
                OptionMessage::default()
                    .setting(name)
                    .text(" is a setting of ")
                    .setting("sampler")
                    .text(format!(" {owner}, not of the sampler this run uses")),
            ));
        }
        Ok(match sampler {
            Sampler::Llada(l) => Sampler::Llada(Llada {
                remasking: self.remasking.unwrap_or(l.remasking),
                cfg_scale: self.cfg_scale.unwrap_or(l.cfg_scale),
                eos: EosGuards {
                    logits_eos_inf: self.logits_eos_inf.unwrap_or(l.eos.logits_eos_inf),
                    confidence_eos_eot_inf: self
                        .confidence_eos_eot_inf
                        .unwrap_or(l.eos.confidence_eos_eot_inf),
                    ..l.eos
                },
            }),
            Sampler::Dream(d) => Sampler::Dream(Dream {
                alg: self.alg.unwrap_or(d.alg),
                alg_temp: self.alg_temp.or(d.alg_temp),
                eps: self.eps.unwrap_or(d.eps),
                top_p,
                top_k,
            }),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::named::Named;
    use crate::sample::request::tests::greedy_confidence;
    use crate::sample::request::SamplerSettings;

    #[test]
    fn names_parse_as_flags_and_fields() {
        for &a in Alg::ALL {
            assert_eq!(serde_json::from_value::<Alg>(a.name().into()).unwrap(), a);
            // Dream's Python spellings are accepted as well.
            for &alias in a.aliases() {
                assert_eq!(serde_json::from_value::<Alg>(alias.into()).unwrap(), a);
                assert_eq!(alias.parse::<Alg>().unwrap(), a);
            }
        }
        assert_eq!("maskgit_plus".parse::<Alg>().unwrap(), Alg::MaskgitPlus);
        for &r in Remasking::ALL {
            assert_eq!(
                serde_json::from_value::<Remasking>(r.name().into()).unwrap(),
                r
            );
        }
        // LLaDA's Python spelling too.
        assert_eq!(
            serde_json::from_value::<Remasking>("low_confidence".into()).unwrap(),
            Remasking::LowConfidence
        );
        assert_eq!(
            "low_confidence".parse::<Remasking>().unwrap(),
            Remasking::LowConfidence
        );
    }

    #[test]
    fn family_settings_reach_their_sampler_only() {
        let ok = greedy_confidence();
        let gpt2 = Architecture::Gpt2;
        let bad = [
            // A family setting with another sampler, or a value its reference refuses.
            SamplerSettings {
                family: FamilySettings {
                    cfg_scale: Some(1.0),
                    ..Default::default()
                },
                ..ok.clone()
            },
            SamplerSettings {
                sampler: Some(SamplerName::Dream),
                family: FamilySettings {
                    remasking: Some(Remasking::Random),
                    ..Default::default()
                },
                ..ok.clone()
            },
            SamplerSettings {
                sampler: Some(SamplerName::Llada),
                family: FamilySettings {
                    cfg_scale: Some(-1.0),
                    ..Default::default()
                },
                ..ok.clone()
            },
            SamplerSettings {
                sampler: Some(SamplerName::Llada),
                top_p: Some(0.9),
                temperature: Some(1.0),
                ..ok.clone()
            },
            SamplerSettings {
                sampler: Some(SamplerName::Dream),
                threshold: Some(0.9),
                ..ok.clone()
            },
            SamplerSettings {
                sampler: Some(SamplerName::Dream),
                family: FamilySettings {
                    confidence_eos_eot_inf: Some(true),
                    ..Default::default()
                },
                ..ok.clone()
            },
            SamplerSettings {
                sampler: Some(SamplerName::Dream),
                family: FamilySettings {
                    eps: Some(1.5),
                    ..Default::default()
                },
                ..ok.clone()
            },
        ];
        for s in bad {
            assert!(s.options(gpt2).is_err(), "{s:?}");
        }
        // The families' settings reach their samplers; the default is the family's.
        let dream = SamplerSettings {
            sampler: Some(SamplerName::Dream),
            top_p: Some(0.9),
            family: FamilySettings {
                alg: Some(Alg::TopkMargin),
                alg_temp: Some(0.5),
                ..Default::default()
            },
            ..ok.clone()
        };
        let want = Dream {
            alg: Alg::TopkMargin,
            alg_temp: Some(0.5),
            top_p: Some(0.9),
            ..Dream::default()
        };
        assert_eq!(dream.options(gpt2).unwrap().sampler, Sampler::Dream(want));
        let default = SamplerSettings {
            sampler: None,
            ..ok.clone()
        };
        assert_eq!(
            default.options(gpt2).unwrap().sampler,
            Sampler::TopkConfidence
        );
        let o = default.options(Architecture::Llada).unwrap();
        assert_eq!(
            (o.sampler, o.shift),
            (Sampler::Llada(Llada::default()), Shift::Same)
        );
        let o = default.options(Architecture::Dream).unwrap();
        assert_eq!(
            (o.sampler, o.shift),
            (Sampler::Dream(Dream::default()), Shift::Concat)
        );
        let llada = SamplerSettings {
            sampler: Some(SamplerName::Llada),
            block_length: Some(2),
            family: FamilySettings {
                cfg_scale: Some(0.5),
                logits_eos_inf: Some(true),
                ..Default::default()
            },
            ..ok.clone()
        };
        let o = llada.options(gpt2).unwrap();
        assert_eq!(
            o.sampler,
            Sampler::Llada(Llada {
                remasking: Remasking::LowConfidence,
                cfg_scale: 0.5,
                eos: EosGuards {
                    logits_eos_inf: true,
                    ..EosGuards::default()
                },
            })
        );
    }
}
