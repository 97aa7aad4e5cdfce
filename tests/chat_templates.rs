//! Chat templates rendered as written by the Jinja engine: released templates byte for byte
//! against renderings derived by hand from their text, and the templates the engine refuses.

mod common;

use std::path::Path;

use common::{dlm_fails, tiny_dlm_dir};
use dlm::data::chat::{ChatMessage, ChatTemplate};
use dlm::model::gguf::GgufFile;
use serde_json::json;

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.into(),
    }
}

fn write_config(dir: &Path, config: serde_json::Value) {
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

fn load(config: serde_json::Value) -> (tempfile::TempDir, ChatTemplate) {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), config);
    let t = ChatTemplate::load(dir.path()).unwrap();
    (dir, t)
}

/// SmolLM2-135M-Instruct's template, read from the released GGUF (as `dlm convert` writes it):
/// ChatML with a default system turn, the prompt the former ChatML-only path also built.
#[test]
fn smollm2_template_renders_byte_exactly() {
    let gguf = GgufFile::open(&common::smollm2_gguf()).unwrap();
    let template = gguf
        .str_value("tokenizer.chat_template")
        .unwrap()
        .to_owned();
    let (_d, t) = load(json!({"chat_template": template,
                              "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}));
    let system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
                  Hugging Face<|im_end|>\n";
    assert_eq!(
        t.render(&[msg("user", "Hi")]).unwrap(),
        format!("{system}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    );
    let turns = [
        msg("system", "Be brief."),
        msg("user", "2+2?"),
        msg("assistant", "4"),
        msg("user", " and 3+3? "),
    ];
    assert_eq!(
        t.render(&turns).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n\
         <|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n and 3+3? <|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

/// Given the GGUF file itself (`dlm generate x.gguf --chat`), the template and its BOS/EOS come
/// from the file's metadata and render as the converted directory's do; a GGUF without a
/// template says so.
#[test]
fn gguf_files_carry_their_own_template() {
    let path = common::smollm2_gguf();
    let from_file = ChatTemplate::load(&path).unwrap();
    let gguf = GgufFile::open(&path).unwrap();
    let template = gguf.str_value("tokenizer.chat_template").unwrap();
    let (_d, from_dir) = load(json!({"chat_template": template,
                                     "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}));
    let turns = [
        msg("user", "Hi"),
        msg("assistant", "Hello"),
        msg("user", "Bye"),
    ];
    assert_eq!(
        from_file.render(&turns).unwrap(),
        from_dir.render(&turns).unwrap()
    );
}

/// GSAI-ML/LLaDA-8B-Instruct's `chat_template` and special tokens as its tokenizer_config.json
/// has them (Llama 3's headers with LLaDA's own BOS; not ChatML): the BOS before the first
/// turn only, contents trimmed, the assistant header always opened.
const LLADA_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}\
{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ \
message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + \
content %}{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}";

#[test]
fn llada_template_renders_byte_exactly() {
    let (_d, t) = load(json!({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "cls_token": "[CLS]",
        "chat_template": LLADA_TEMPLATE,
    }));
    assert_eq!(
        t.render(&[msg("user", " Hello \n")]).unwrap(),
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let turns = [
        msg("system", "S"),
        msg("user", "U"),
        msg("assistant", "A\n"),
        msg("user", "V"),
    ];
    assert_eq!(
        t.render(&turns).unwrap(),
        "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nV<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

/// Dream-v0-Instruct-7B's exact released string could not be found here; Dream's tokenizer is
/// Qwen2's, and the prompts its repository prints (demo_multiturn_chat.py) are ChatML with
/// "You are a helpful assistant." as the default system turn, which is what Qwen2-Instruct's
/// released template (this text) renders. The rendering is checked against that demo's shape.
const QWEN2_TEMPLATE: &str =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] \
!= 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}\
{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn dream_chatml_template_renders_byte_exactly() {
    let (_d, t) = load(json!({
        "bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>",
        "mask_token": "<|mask|>", "pad_token": "<|endoftext|>",
        "chat_template": QWEN2_TEMPLATE,
    }));
    let turns = [msg("user", "Q1"), msg("assistant", "A1"), msg("user", "Q2")];
    assert_eq!(
        t.render(&turns).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n\
         <|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn a_template_file_beside_the_config_wins_as_in_transformers() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        json!({"chat_template": "config", "bos_token": "<b>"}),
    );
    let json_file = dir.path().join("chat_template.json");
    std::fs::write(
        &json_file,
        json!({"chat_template": "json {{ bos_token }}"}).to_string(),
    )
    .unwrap();
    let t = ChatTemplate::load(dir.path()).unwrap();
    assert_eq!(t.render(&[msg("user", "u")]).unwrap(), "json <b>");
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "jinja {{ messages[-1].content }}\n",
    )
    .unwrap();
    let t = ChatTemplate::load(dir.path()).unwrap();
    assert_eq!(t.render(&[msg("user", "u")]).unwrap(), "jinja u");
}

#[test]
fn templates_the_engine_rejects_are_errors_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    // A syntax error: refused when the template is read.
    write_config(
        dir.path(),
        json!({"chat_template": "{% for m in messages %}{{ m.content }}"}),
    );
    let e = ChatTemplate::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json: chat_template") && e.contains("syntax error"),
        "{e}"
    );
    std::fs::write(dir.path().join("chat_template.jinja"), "{{ 1 + }}").unwrap();
    let e = ChatTemplate::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("chat_template.jinja") && e.contains("rejects"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();

    // raise_exception: refused when the conversation is rendered, with the template's message.
    write_config(
        dir.path(),
        json!({"chat_template": "{% if messages[0]['role'] != 'user' %}\
            {{ raise_exception('Conversation must start with a user turn') }}{% endif %}ok"}),
    );
    let t = ChatTemplate::load(dir.path()).unwrap();
    assert_eq!(t.render(&[msg("user", "u")]).unwrap(), "ok");
    let e = t.render(&[msg("assistant", "a")]).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json: chat_template")
            && e.contains("Conversation must start with a user turn"),
        "{e}"
    );

    // A template that is neither a string nor a list of named ones.
    write_config(dir.path(), json!({"chat_template": 7}));
    let e = ChatTemplate::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("chat_template is not a string"), "{e}");
}

#[test]
fn generate_chat_reports_a_rejected_template() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_dlm_dir(tmp.path());
    write_config(
        &model,
        json!({"chat_template": "{{ raise_exception('no chatting with this one') }}"}),
    );
    let dir = model.to_str().unwrap();
    let e = dlm_fails(["generate", dir, "--prompt", "hi", "--chat", "--length", "2"]);
    assert!(
        e.contains("tokenizer_config.json: chat_template") && e.contains("no chatting"),
        "{e}"
    );
    write_config(&model, json!({"chat_template": "{% if %}"}));
    let e = dlm_fails(["generate", dir, "--prompt", "hi", "--chat", "--length", "2"]);
    assert!(
        e.contains("tokenizer_config.json: chat_template") && e.contains("rejects"),
        "{e}"
    );
}
