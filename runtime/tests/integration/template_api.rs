//! The template API other modules use: construction from `swift` arguments, stop tokens,
//! response decoding, and the errors a user can cause.

use std::path::Path;

use kubeswift_args::{Command, Given, GivenValue, Origin, resolve};
use kubeswift_runtime::template::{
    LossScale, Message, QWEN2_5_SYSTEM, Template, TemplateError, TemplateOptions,
};
use serde_json::Value;
use tokenizers::Tokenizer;

fn family(name: &str) -> (Tokenizer, Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/templates")
        .join(name);
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    (tokenizer, config)
}

fn words(name: &str, values: &[&str]) -> Given {
    Given {
        name: name.into(),
        value: GivenValue::Words(values.iter().map(|s| s.to_string()).collect()),
        origin: Origin::CommandLine,
    }
}

fn template(name: &str, fam: &str) -> Template {
    let (tok, config) = family(fam);
    Template::new(&TemplateOptions::new(name), tok, &config).unwrap()
}

fn id(t: &Template, token: &str) -> u32 {
    t.tokenizer().token_to_id(token).unwrap()
}

#[test]
fn from_args_picks_the_model_types_template_and_reads_system_files() {
    let (tok, config) = family("chatml");
    let args = resolve(Command::Infer, vec![]).unwrap().args;
    let t = Template::from_args(&args, "qwen2_5", tok.clone(), &config).unwrap();
    assert_eq!(t.name(), "qwen2_5");
    assert_eq!(t.default_system(), Some(QWEN2_5_SYSTEM));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("system.txt");
    std::fs::write(&file, "From a file.\nTwo lines.").unwrap();
    let args = resolve(
        Command::Sft,
        vec![words("system", &[file.to_str().unwrap()])],
    )
    .unwrap()
    .args;
    let t = Template::from_args(&args, "qwen2", tok.clone(), &config).unwrap();
    assert_eq!(
        (t.name(), t.default_system()),
        ("qwen", Some("From a file.\nTwo lines."))
    );

    let args = resolve(
        Command::Sft,
        vec![words("system", &["Line one\\nline two"])],
    )
    .unwrap()
    .args;
    let t = Template::from_args(&args, "qwen2", tok.clone(), &config).unwrap();
    assert_eq!(
        t.default_system(),
        Some("Line one\nline two"),
        "a literal \\n is a newline, as in ms-swift"
    );

    let args = resolve(Command::Sft, vec![words("system", &["missing.txt"])])
        .unwrap()
        .args;
    let err = Template::from_args(&args, "qwen2", tok.clone(), &config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--system missing.txt"), "{err}");
}

#[test]
fn swift_pt_uses_the_generation_template() {
    let (tok, config) = family("chatml");
    let args = resolve(Command::Pt, vec![]).unwrap().args;
    let t = Template::from_args(&args, "qwen2", tok, &config).unwrap();
    assert!(!t.uses_chat_template());
    let text = [Message::assistant("The quick brown fox.")];
    let e = t.encode(&text, LossScale::All).unwrap();
    let decoded = t.tokenizer().decode(&e.input_ids, false).unwrap();
    assert_eq!(
        decoded, "The quick brown fox.<|im_end|>",
        "plain text, then eos"
    );
    assert_eq!(
        e.trained_tokens(),
        e.len() - 1,
        "every token but the first is trained"
    );
}

#[test]
fn stop_tokens_and_response_decoding() {
    let qwen = template("qwen", "chatml");
    assert_eq!(
        qwen.stop_token_ids(),
        [id(&qwen, "<|endoftext|>"), id(&qwen, "<|im_end|>")]
    );
    let llama = template("llama3", "llama3");
    assert_eq!(llama.stop_token_ids(), [id(&llama, "<|eot_id|>")]);
    assert_eq!(qwen.pad_token_id(), id(&qwen, "<|endoftext|>"));
    assert_eq!(llama.pad_token_id(), id(&llama, "<|end_of_text|>"));
    let mut generated = llama
        .tokenizer()
        .encode("Paris.", false)
        .unwrap()
        .get_ids()
        .to_vec();
    generated.push(id(&llama, "<|eot_id|>"));
    assert_eq!(llama.decode_response(&generated).unwrap(), "Paris.");
    // Stop words other than the end of turn and eos stay in the output, as in ms-swift.
    let mut with_other = qwen
        .tokenizer()
        .encode("hi", false)
        .unwrap()
        .get_ids()
        .to_vec();
    with_other.push(id(&qwen, "<|endoftext|>"));
    assert_eq!(
        qwen.decode_response(&with_other).unwrap(),
        "hi<|endoftext|>"
    );
}

#[test]
fn the_generation_prompt_ends_the_prompt() {
    let t = template("qwen", "chatml");
    let ids = t.encode_prompt(&[Message::user("hi")]).unwrap();
    let text = t.tokenizer().decode(&ids, false).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn user_errors_name_what_is_wrong() {
    let (tok, config) = family("chatml");
    let err = Template::new(&TemplateOptions::new("vicuna"), tok.clone(), &config).unwrap_err();
    assert!(matches!(err, TemplateError::UnknownTemplate { .. }));
    assert!(
        err.to_string().contains("'vicuna'") && err.to_string().contains("qwen2_5"),
        "{err}"
    );

    let args = resolve(Command::Infer, vec![]).unwrap().args;
    let err = Template::from_args(&args, "gpt2", tok.clone(), &config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model_type 'gpt2'") && err.contains("--template"),
        "{err}"
    );

    // A Llama 3 template over a ChatML tokenizer: the header tokens are missing.
    let err = Template::new(&TemplateOptions::new("llama3"), tok.clone(), &config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'<|begin_of_text|>'") && err.contains("llama3"),
        "{err}"
    );

    let no_eos = serde_json::json!({});
    let err = Template::new(&TemplateOptions::new("qwen"), tok.clone(), &no_eos)
        .unwrap_err()
        .to_string();
    assert!(err.contains("eos_token"), "{err}");

    let generation = TemplateOptions {
        use_chat_template: false,
        system: Some("x".into()),
        ..TemplateOptions::new("qwen")
    };
    let err = Template::new(&generation, tok.clone(), &config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not support a system prompt") && err.contains("--system"),
        "{err}"
    );

    let t = template("qwen", "chatml");
    let late_system = [
        Message::user("a"),
        Message::system("b"),
        Message::assistant("c"),
    ];
    let err = t
        .encode(&late_system, LossScale::Default)
        .unwrap_err()
        .to_string();
    assert!(err.contains("message 1") && err.contains("system"), "{err}");
    let err = t
        .encode(&[Message::system("only")], LossScale::Default)
        .unwrap_err();
    assert!(matches!(err, TemplateError::EmptyConversation), "{err}");

    let jinja = TemplateOptions {
        backend: kubeswift_runtime::template::Backend::Jinja,
        ..TemplateOptions::new("qwen")
    };
    let t = Template::new(&jinja, tok, &config).unwrap();
    let err = t
        .encode(
            &[Message::user("a"), Message::assistant("b")],
            LossScale::Default,
        )
        .unwrap_err();
    assert!(matches!(err, TemplateError::JinjaTraining), "{err}");
}

/// transformers 4.47+ saves the chat template as `chat_template.jinja`; the jinja backend
/// reads it, and it wins over tokenizer_config.json's entry as in transformers.
#[test]
fn a_chat_template_jinja_file_is_the_jinja_backends_template() {
    use kubeswift_runtime::model::{Pretrained, PretrainedOptions};
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-Qwen2.5");
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny-Qwen2.5");
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        folder.join("chat_template.jinja"),
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}\
         {% if add_generation_prompt %}[assistant] {% endif %}",
    )
    .unwrap();
    let pretrained = Pretrained::load(&folder, &PretrainedOptions::default()).unwrap();
    let jinja = TemplateOptions {
        backend: kubeswift_runtime::template::Backend::Jinja,
        ..TemplateOptions::new("qwen2_5")
    };
    let t = Template::new(
        &jinja,
        pretrained.tokenizer.clone(),
        &pretrained.tokenizer_config,
    )
    .unwrap();
    let prompt = t.encode_prompt(&[Message::user("hi there")]).unwrap();
    let text = t.tokenizer().decode(&prompt, false).unwrap();
    assert!(
        text.contains("[user] hi there") && text.ends_with("[assistant] "),
        "{text:?}"
    );
}
