//! Conversations as prompt text: the chat template a model's tokenizer ships, a Jinja source,
//! rendered as Hugging Face's `apply_chat_template` renders it (`dlm generate --chat`, the server's
//! chat completions). The template is run as written, whatever its format (ChatML, LLaDA's
//! Llama-3 headers, …), by minijinja configured like transformers' Jinja environment.

use std::fmt::Write as _;
use std::path::Path;

use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// The tokenizer's special tokens that transformers hands every template by name
/// (`special_tokens_map`).
const SPECIAL_TOKENS: [&str; 8] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
];

/// The name the template is compiled under (it appears in the engine's messages).
const NAME: &str = "chat_template";

/// A model's chat template, read and compiled once.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template was read: a file, and the key in it where there is one.
    origin: String,
    /// The special tokens from `tokenizer_config.json`, passed to the template by name.
    specials: Vec<(&'static str, Value)>,
}

impl ChatTemplate {
    /// Reads the template from `model_dir` where transformers looks for it, first found wins:
    /// `chat_template.jinja`, `chat_template.json`'s `chat_template`, `tokenizer_config.json`'s
    /// `chat_template`; the special tokens come from `tokenizer_config.json`. No template means
    /// the model cannot chat; a file that is not a JSON object is malformed, and said to be; a
    /// template the engine rejects is refused naming its file and key.
    pub fn load(model_dir: &Path) -> Result<Self> {
        if model_dir.is_file()
            && model_dir
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Self::from_gguf(model_dir);
        }
        let config_path = model_dir.join("tokenizer_config.json");
        let config = read_json_object(&config_path)?.unwrap_or_default();
        let jinja = model_dir.join("chat_template.jinja");
        let json = model_dir.join("chat_template.json");
        let (source, origin) = if let Some(text) = read_optional(&jinja)? {
            (text, jinja.display().to_string())
        } else if let Some(object) = read_json_object(&json)? {
            let origin = format!("{}: chat_template", json.display());
            match object.get("chat_template") {
                Some(t) => (template_text(t, &origin)?, origin),
                None => {
                    return Err(Error::Input(format!(
                        "{} has no chat_template",
                        json.display()
                    )))
                }
            }
        } else {
            let origin = format!("{}: chat_template", config_path.display());
            match config.get("chat_template") {
                None | Some(serde_json::Value::Null) => {
                    return Err(Error::Input(format!(
                        "{} has no chat_template",
                        config_path.display()
                    )))
                }
                Some(t) => (template_text(t, &origin)?, origin),
            }
        };
        let specials = SPECIAL_TOKENS
            .iter()
            .filter_map(|&key| special_token(config.get(key)?).map(|v| (key, v)))
            .collect();
        Self::new(source, origin, specials)
    }

    /// A llama.cpp GGUF's `tokenizer.chat_template`, with its BOS and EOS tokens (by id, as
    /// llama.cpp renders them) as the template's `bos_token` and `eos_token`.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let f = GgufFile::open(path)?;
        let origin = format!("{}: tokenizer.chat_template", path.display());
        let Some(source) = f.str_value("tokenizer.chat_template") else {
            return Err(Error::Input(format!(
                "{} has no tokenizer.chat_template",
                path.display()
            )));
        };
        let tokens = f.strings("tokenizer.ggml.tokens")?;
        let mut specials = Vec::new();
        for (key, name) in [
            ("tokenizer.ggml.bos_token_id", "bos_token"),
            ("tokenizer.ggml.eos_token_id", "eos_token"),
        ] {
            if let Some(token) = f.usize_value(key)?.and_then(|id| tokens.get(id)) {
                specials.push((name, Value::from(token.clone())));
            }
        }
        Self::new(source.to_owned(), origin, specials)
    }

    fn new(source: String, origin: String, specials: Vec<(&'static str, Value)>) -> Result<Self> {
        let mut env = jinja_environment();
        env.add_template_owned(NAME, source).map_err(|e| {
            Error::Input(format!(
                "{origin}: the Jinja engine rejects the template: {e}"
            ))
        })?;
        Ok(Self {
            env,
            origin,
            specials,
        })
    }

    /// The template's rendering of a conversation with the assistant's turn opened
    /// (`add_generation_prompt`).
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::Input("the conversation has no messages".into()));
        }
        for (k, m) in messages.iter().enumerate() {
            if !["system", "user", "assistant"].contains(&m.role.as_str()) {
                return Err(Error::Input(format!(
                    "message {k} has role `{}`; expected system, user or assistant",
                    m.role
                )));
            }
        }
        let mut context: Vec<(&str, Value)> = self.specials.clone();
        context.push(("messages", Value::from(Serde(messages))));
        context.push(("add_generation_prompt", Value::from(true)));
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Internal(format!("the compiled chat template is gone: {e}")))?;
        template
            .render(Value::from_pairs(context))
            .map_err(|e| Error::Input(format!("{}: {e}", self.origin)))
    }
}

/// minijinja set up as transformers sets up Jinja for chat templates: blocks trimmed and
/// left-stripped, loop controls, `raise_exception`, `strftime_now`, a `tojson` that writes as
/// Python's `json.dumps`, and Python's string, list and dict methods.
fn jinja_environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<Value, _> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_function("strftime_now", |format: String| {
        let mut out = String::new();
        write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("strftime_now: `{format}` is not a strftime format"),
            )
        })?;
        Ok(out)
    });
    env.add_filter("tojson", tojson);
    env
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`, the
/// filter transformers installs: `", "` and `": "` between items inline, one item a line when
/// indented.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(out)
}

fn write_python_json(
    v: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    // Containers are walked here (the maps in insertion order, as Python keeps dicts);
    // scalars are written by serde_json, which spells them as Python's json does.
    let items: Vec<(Option<String>, Value)> = match v.kind() {
        ValueKind::Seq | ValueKind::Iterable => v.try_iter()?.map(|x| (None, x)).collect(),
        ValueKind::Map => {
            let mut kv = Vec::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                kv.push((
                    Some(key.as_str().map_or_else(|| key.to_string(), str::to_owned)),
                    item,
                ));
            }
            if sort_keys {
                kv.sort_by(|a, b| a.0.cmp(&b.0));
            }
            kv
        }
        ValueKind::Undefined | ValueKind::None => {
            out.push_str("null");
            return Ok(());
        }
        _ => {
            out.push_str(&json_text(v)?);
            return Ok(());
        }
    };
    let (open, close) = if v.kind() == ValueKind::Map {
        ('{', '}')
    } else {
        ('[', ']')
    };
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    out.push(open);
    let empty = items.is_empty();
    for (i, (key, item)) in items.into_iter().enumerate() {
        if i > 0 {
            out.push_str(if indent.is_some() { "," } else { ", " });
        }
        newline(out, depth + 1);
        if let Some(k) = key {
            out.push_str(&json_text(&k)?);
            out.push_str(": ");
        }
        write_python_json(&item, indent, sort_keys, depth + 1, out)?;
    }
    if !empty {
        newline(out, depth);
    }
    out.push(close);
    Ok(())
}

fn json_text<T: Serialize + ?Sized>(x: &T) -> std::result::Result<String, minijinja::Error> {
    serde_json::to_string(x)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// A template value: a string, or transformers' list of named templates, of which the one
/// named `default` is the chat template.
fn template_text(t: &serde_json::Value, origin: &str) -> Result<String> {
    if let Some(s) = t.as_str() {
        return Ok(s.to_string());
    }
    let named = t.as_array().map(|list| {
        list.iter().find_map(|entry| {
            (entry.get("name")?.as_str()? == "default")
                .then(|| entry.get("template")?.as_str())
                .flatten()
        })
    });
    match named {
        Some(Some(s)) => Ok(s.to_string()),
        Some(None) => Err(Error::Input(format!(
            "{origin}: no template named `default` in the list of named templates"
        ))),
        None => Err(Error::Input(format!(
            "{origin} is not a string or a list of named templates"
        ))),
    }
}

/// A special token as the config writes it: a string, an `AddedToken` object (its `content`),
/// or a list of these (`additional_special_tokens`).
fn special_token(v: &serde_json::Value) -> Option<Value> {
    let one = |v: &serde_json::Value| {
        v.as_str()
            .or_else(|| v.get("content")?.as_str())
            .map(Value::from)
    };
    match v {
        serde_json::Value::Array(list) => Some(list.iter().filter_map(one).collect()),
        _ => one(v),
    }
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn read_json_object(path: &Path) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    read_optional(path)?
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| Error::Input(format!("{} is malformed: {e}", path.display())))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A model directory whose tokenizer_config.json holds `config`.
    fn with_config(config: serde_json::Value) -> (tempfile::TempDir, ChatTemplate) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer_config.json");
        std::fs::write(path, config.to_string()).unwrap();
        let t = ChatTemplate::load(dir.path()).unwrap();
        (dir, t)
    }

    #[test]
    fn chat_turns_render_as_chatml() {
        let (_d, t) = with_config(serde_json::json!({"chat_template":
            "{% for m in messages %}{% if loop.first and m.role != 'system' %}\
             {{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}\
             {{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endfor %}\
             {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"}));
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

    #[test]
    fn python_methods_special_tokens_and_tojson_work_as_in_transformers() {
        let (_d, t) = with_config(serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
            "chat_template": "{{ bos_token }}{% for m in messages %}\
                {% if m.content.strip().startswith('x') %}{% continue %}{% endif %}\
                {{ m.content.upper() }}{{ m | tojson }}{{ eos_token }}{% endfor %}"}));
        assert_eq!(
            t.render(&[msg("user", " x skipped"), msg("user", "é \"q\"")])
                .unwrap(),
            "<s>É \"Q\"{\"role\": \"user\", \"content\": \"é \\\"q\\\"\"}</s>"
        );
        let (_d, t) = with_config(serde_json::json!({
            "chat_template": "{{ messages[0] | tojson(indent=2) }}|{{ [] | tojson }}"}));
        assert_eq!(
            t.render(&[msg("user", "a")]).unwrap(),
            "{\n  \"role\": \"user\",\n  \"content\": \"a\"\n}|[]"
        );
    }

    #[test]
    fn strftime_now_formats_the_local_date() {
        let (_d, t) = with_config(serde_json::json!({
            "chat_template": "{{ strftime_now('%Y') }}"}));
        let year = t.render(&[msg("user", "a")]).unwrap();
        assert_eq!(year, chrono::Local::now().format("%Y").to_string());
    }

    #[test]
    fn named_templates_use_the_default_one() {
        let (_d, t) = with_config(serde_json::json!({"chat_template": [
            {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}));
        assert_eq!(t.render(&[msg("user", "a")]).unwrap(), "D");
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({"chat_template": [{"name": "rag", "template": "R"}]});
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let e = ChatTemplate::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tokenizer_config.json: chat_template") && e.contains("`default`"));
    }
}
