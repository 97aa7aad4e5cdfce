//! Conversations as prompt text: a model's ChatML chat template, read from the
//! `tokenizer_config.json` beside its tokenizer, renders chat turns (`dlm generate --chat`, the
//! server's chat completions).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A model's ChatML chat template, read once from `tokenizer_config.json`. dlm does not run
/// Jinja; templates that are not ChatML are refused by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// The template's default system message, used when a conversation brings none.
    pub default_system: Option<String>,
}

impl ChatTemplate {
    /// Reads `model_dir/tokenizer_config.json`. A missing file or `chat_template` means the
    /// model cannot chat; a file that is not a JSON
    /// object is malformed, and said to be.
    pub fn load(model_dir: &Path) -> Result<Self> {
        let path = model_dir.join("tokenizer_config.json");
        let config: serde_json::Map<String, serde_json::Value> =
            match std::fs::read_to_string(&path) {
                Ok(text) => serde_json::from_str(&text)
                    .map_err(|e| Error::Input(format!("{} is malformed: {e}", path.display())))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
                Err(e) => return Err(Error::io(&path, e)),
            };
        let template = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => {
                return Err(Error::Input(format!(
                    "{} has no chat_template",
                    path.display()
                )))
            }
            Some(t) => t.as_str().ok_or_else(|| {
                Error::Input(format!(
                    "{}: chat_template is not a string (lists of named templates are not \
                     supported)",
                    path.display()
                ))
            })?,
        };
        if !template.contains("<|im_start|>") {
            return Err(Error::Input(format!(
                "{}: only ChatML chat templates are supported",
                path.display()
            )));
        }
        // The default system message sits in a string literal, after a newline that the template
        // may hold literally or as an escape.
        let default_system = ["<|im_start|>system\n", "<|im_start|>system\\n"]
            .iter()
            .find_map(|marker| {
                let start = template.find(marker)? + marker.len();
                let rest = &template[start..];
                rest.find("<|im_end|>").map(|end| rest[..end].to_string())
            });
        Ok(Self { default_system })
    }

    /// The ChatML rendering of a conversation, ending with the assistant's open turn.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::Input("the conversation has no messages".into()));
        }
        let mut out = String::new();
        if let (Some(system), false) = (&self.default_system, messages[0].role == "system") {
            out += &format!("<|im_start|>system\n{system}<|im_end|>\n");
        }
        for (k, m) in messages.iter().enumerate() {
            if !["system", "user", "assistant"].contains(&m.role.as_str()) {
                return Err(Error::Input(format!(
                    "message {k} has role `{}`; expected system, user or assistant",
                    m.role
                )));
            }
            out += &format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content);
        }
        out += "<|im_start|>assistant\n";
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_turns_render_as_chatml() {
        let t = ChatTemplate {
            default_system: Some("Be brief.".into()),
        };
        let msg = |role: &str, content: &str| ChatMessage {
            role: role.into(),
            content: content.into(),
        };
        assert_eq!(
            t.render(&[msg("user", "hi")]).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let own = t.render(&[msg("system", "S"), msg("user", "u")]).unwrap();
        assert!(own.starts_with("<|im_start|>system\nS<|im_end|>") && !own.contains("brief"));
        assert!(t.render(&[msg("robot", "x")]).is_err());
        assert!(t.render(&[]).is_err());
    }
}
