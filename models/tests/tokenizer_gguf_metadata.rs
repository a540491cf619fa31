//! Tokenizers from small hand-written GGUF vocabularies: pre-tokenizer selection, BOS rules and
//! errors for metadata that cannot describe a tokenizer.

use sunswarm_models::gguf::{GgufFile, GgufValue, gguf_bytes};
use sunswarm_models::tokenizer::{TextTokenizer, TokenizerError};

fn strings(items: &[&str]) -> GgufValue {
    GgufValue::Array(
        items
            .iter()
            .map(|s| GgufValue::String(s.to_string()))
            .collect(),
    )
}

/// A byte-level vocabulary: every byte's symbol, two merges, and two control tokens.
fn metadata(pre: Option<&str>) -> Vec<(String, GgufValue)> {
    let mut tokens: Vec<String> = vec!["<s>".into(), "</s>".into()];
    // GPT-2's byte-to-symbol table maps printable ASCII to itself and space to 'Ġ'
    tokens.extend((b'!'..=b'~').map(|b| (b as char).to_string()));
    tokens.extend([
        "Ġ".to_string(),
        "ab".to_string(),
        "Ġab".to_string(),
        "12".to_string(),
    ]);
    let mut types = vec![GgufValue::I32(3), GgufValue::I32(3)];
    types.extend(std::iter::repeat_n(GgufValue::I32(1), tokens.len() - 2));
    let mut m = vec![
        (
            "tokenizer.ggml.model".to_string(),
            GgufValue::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            GgufValue::Array(
                tokens
                    .iter()
                    .map(|t| GgufValue::String(t.clone()))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            GgufValue::Array(types),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            strings(&["a b", "Ġ ab", "1 2"]),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), GgufValue::U32(0)),
        ("tokenizer.ggml.eos_token_id".to_string(), GgufValue::U32(1)),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            GgufValue::Bool(true),
        ),
    ];
    if let Some(pre) = pre {
        m.push((
            "tokenizer.ggml.pre".to_string(),
            GgufValue::String(pre.into()),
        ));
    }
    m
}

fn build(metadata: &[(String, GgufValue)]) -> Result<TextTokenizer, TokenizerError> {
    let gguf = GgufFile::from_bytes(gguf_bytes(metadata, &[]).unwrap()).unwrap();
    TextTokenizer::from_gguf(&gguf)
}

fn id(tok: &TextTokenizer, piece: &str) -> u32 {
    tok.token_id(piece).unwrap()
}

#[test]
fn default_pre_tokenizer_honours_add_bos_and_merges() {
    let tok = build(&metadata(None)).unwrap();
    assert!(tok.add_bos());
    let ids = tok.encode("ab ab</s>").unwrap();
    assert_eq!(ids, vec![0, id(&tok, "ab"), id(&tok, "Ġab"), 1]);
    assert_eq!(tok.decode(&ids).unwrap(), "<s>ab ab</s>");
    assert_eq!(tok.eos_ids(), &[1]);
    // GPT-2 splitting keeps digit runs together, so the "1 2" merge applies
    assert_eq!(tok.encode("12").unwrap()[1..], [id(&tok, "12")]);
}

#[test]
fn smollm_splits_digits_and_never_adds_bos() {
    let tok = build(&metadata(Some("smollm"))).unwrap();
    assert!(!tok.add_bos());
    assert_eq!(
        tok.encode("12").unwrap(),
        vec![id(&tok, "1"), id(&tok, "2")]
    );
}

#[test]
fn llama_bpe_is_supported() {
    let tok = build(&metadata(Some("llama-bpe"))).unwrap();
    assert!(tok.add_bos());
    assert_eq!(
        tok.encode("ab ab").unwrap(),
        vec![0, id(&tok, "ab"), id(&tok, "Ġab")]
    );
    // Llama 3 splits digits in runs of up to three
    assert_eq!(tok.encode("12").unwrap(), vec![0, id(&tok, "12")]);
}

#[test]
fn set_add_bos_overrides_the_model() {
    let mut tok = build(&metadata(Some("smollm"))).unwrap();
    tok.set_add_bos(true);
    assert_eq!(tok.encode("ab").unwrap(), vec![0, id(&tok, "ab")]);
}

#[test]
fn unsupported_models_and_pre_tokenizers_are_named() {
    let mut m = metadata(Some("qwen9"));
    let err = build(&m).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::UnsupportedPreTokenizer { name, .. } if name == "qwen9"),
        "{err}"
    );
    assert!(
        err.to_string().contains("smollm"),
        "lists the supported ones: {err}"
    );

    m[0].1 = GgufValue::String("llama".into());
    let err = build(&m).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::UnsupportedModel(name) if name == "llama"),
        "{err}"
    );
}

#[test]
fn broken_metadata_is_named() {
    let without = |key: &str| -> Vec<(String, GgufValue)> {
        metadata(None)
            .into_iter()
            .filter(|(k, _)| k != key)
            .collect()
    };
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
    ] {
        let err = build(&without(key)).unwrap_err();
        assert!(
            matches!(&err, TokenizerError::MissingMetadata(k) if k == key),
            "{err}"
        );
    }

    let mut m = metadata(None);
    m[3].1 = strings(&["a b", "nospace"]);
    let err = build(&m).unwrap_err();
    assert!(err.to_string().contains("nospace"), "{err}");

    let mut m = metadata(None);
    m[5].1 = GgufValue::U32(10_000);
    let err = build(&m).unwrap_err();
    assert!(
        err.to_string().contains("tokenizer.ggml.eos_token_id"),
        "{err}"
    );

    let mut m = metadata(None);
    m[1].1 = strings(&["a", "a"]);
    m[2].1 = GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(1)]);
    let err = build(&m).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[test]
fn no_chat_template_is_a_clear_error() {
    let tok = build(&metadata(None)).unwrap();
    let err = tok
        .render_chat(&[sunswarm_models::tokenizer::ChatMessage::user("hi")], true)
        .unwrap_err();
    assert!(matches!(err, TokenizerError::NoChatTemplate));
    assert!(err.to_string().contains("no chat template"));
}

#[test]
fn tokenizer_and_gguf_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<TextTokenizer>();
    shareable::<GgufFile>();
    let tok = build(&metadata(Some("smollm"))).unwrap();
    let copy = tok.clone();
    let handle = std::thread::spawn(move || copy.encode("ab 12").unwrap());
    assert_eq!(handle.join().unwrap(), tok.encode("ab 12").unwrap());
}
