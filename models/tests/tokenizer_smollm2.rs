//! The tokenizer built from the real SmolLM2 GGUF against the reference prompts
//! (fixtures/smollm2-greedy.json, produced by transformers and llama.cpp).

#[path = "fixtures/real_model.rs"]
mod real_model;

use std::sync::OnceLock;

use sunswarm_models::gguf::GgufFile;
use sunswarm_models::tokenizer::{ChatMessage, TextTokenizer, TokenizerError};

fn tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let gguf = GgufFile::open(&real_model::smollm2_gguf()).unwrap();
        TextTokenizer::from_gguf(&gguf).unwrap()
    })
}

struct Prompt {
    name: String,
    messages: Option<Vec<ChatMessage>>,
    rendered_text: String,
    prompt_ids: Vec<u32>,
}

fn prompts() -> Vec<Prompt> {
    let reference = real_model::reference_json();
    let prompts: Vec<Prompt> = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            name: p["name"].as_str().unwrap().to_string(),
            messages: serde_json::from_value(p["messages"].clone()).unwrap(),
            rendered_text: p["rendered_text"].as_str().unwrap().to_string(),
            prompt_ids: serde_json::from_value(p["prompt_ids"].clone()).unwrap(),
        })
        .collect();
    assert!(
        prompts.len() >= 7,
        "reference has {} prompts",
        prompts.len()
    );
    prompts
}

#[test]
fn encodes_every_reference_prompt_exactly() {
    let tok = tokenizer();
    for p in prompts() {
        assert_eq!(
            tok.encode(&p.rendered_text).unwrap(),
            p.prompt_ids,
            "prompt {}",
            p.name
        );
    }
}

#[test]
fn renders_every_chat_prompt_like_the_reference() {
    let tok = tokenizer();
    let mut chats = 0;
    for p in prompts() {
        if let Some(messages) = &p.messages {
            assert_eq!(
                tok.render_chat(messages, true).unwrap(),
                p.rendered_text,
                "prompt {}",
                p.name
            );
            chats += 1;
        }
    }
    assert_eq!(chats, 3);
}

#[test]
fn decode_round_trips_reference_prompts_and_odd_text() {
    let tok = tokenizer();
    for p in prompts() {
        assert_eq!(
            tok.decode(&p.prompt_ids).unwrap(),
            p.rendered_text,
            "prompt {}",
            p.name
        );
    }
    for text in [
        "",
        " ",
        "  two  spaces ",
        "tab\tand\nnewline\r\n",
        "emoji 🦀🌞 and 中文 and ñ",
        "1234567890",
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text, "{text:?}");
    }
}

#[test]
fn special_tokens_bos_and_eos() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    // the GGUF says add_bos_token=true with BOS <|im_start|>; the original tokenizer adds none
    assert!(!tok.add_bos());
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.encode("<|im_start|>user").unwrap()[0], 1);
    assert_eq!(tok.encode("<|im_end|>").unwrap(), vec![2]);
    assert!(tok.eos_ids().contains(&2), "{:?}", tok.eos_ids());
    assert!(
        tok.eos_ids().contains(&0),
        "<|endoftext|> ends generation: {:?}",
        tok.eos_ids()
    );
    assert_eq!(tok.token_text(2).as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.token_text(504).as_deref(), Some("The"));
    assert_eq!(tok.token_piece(2365).as_deref(), Some("Ġquick"));
    assert_eq!(tok.token_text(2365).as_deref(), Some(" quick"));
    assert_eq!(tok.token_text(49152), None);
    assert_eq!(
        tok.decode_skip_special(&[1, 4093, 198, 2]).unwrap(),
        "user\n"
    );
}

#[test]
fn unknown_ids_are_errors() {
    let tok = tokenizer();
    let err = tok.decode(&[5, 49152]).unwrap_err();
    assert!(
        matches!(
            err,
            TokenizerError::UnknownTokenId {
                id: 49152,
                vocab_size: 49152
            }
        ),
        "{err}"
    );
    let mut stream = tok.stream_decoder();
    assert!(stream.push(u32::MAX).is_err());
    // the decoder is still usable after a refused id
    assert_eq!(stream.push(504).unwrap().as_deref(), Some("The"));
}

/// Concatenated stream output equals the full decode, and no piece holds U+FFFD.
fn stream_all(tok: &TextTokenizer, ids: &[u32]) -> Vec<String> {
    let mut stream = tok.stream_decoder();
    let mut pieces = Vec::new();
    for &id in ids {
        pieces.extend(stream.push(id).unwrap());
    }
    pieces.extend(stream.finish().unwrap());
    pieces
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let tok = tokenizer();
    // find a character the tokenizer splits across tokens, so the test cannot pass vacuously
    let text = "Sunswarm 🦀 says 𝄞 and 中文字 ok";
    let ids = tok.encode(text).unwrap();
    let split = ids
        .iter()
        .any(|&id| tok.token_text(id).is_some_and(|t| t.contains('\u{FFFD}')));
    assert!(
        split,
        "no token of {text:?} ends inside a character: {ids:?}"
    );

    let pieces = stream_all(tok, &ids);
    assert_eq!(pieces.concat(), text);
    for piece in &pieces {
        assert!(!piece.contains('\u{FFFD}'), "piece {piece:?} of {pieces:?}");
    }
    assert!(pieces.contains(&" 🦀".to_string()) || pieces.iter().any(|p| p.contains('🦀')));

    // the reference prompts stream to their text too, special tokens included
    for p in prompts() {
        assert_eq!(
            stream_all(tok, &p.prompt_ids).concat(),
            p.rendered_text,
            "prompt {}",
            p.name
        );
    }
}

#[test]
fn stream_decoder_releases_an_incomplete_character_on_finish() {
    let tok = tokenizer();
    let ids = tok.encode("🦀").unwrap();
    assert!(ids.len() >= 2, "🦀 is one token: {ids:?}");
    let mut stream = tok.stream_decoder();
    assert_eq!(stream.push(ids[0]).unwrap(), None);
    assert_eq!(stream.finish().unwrap().as_deref(), Some("\u{FFFD}"));
    assert_eq!(stream.finish().unwrap(), None);
}

#[test]
fn hf_folder_tokenizes_like_the_gguf() {
    let tok = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        tok.to_tokenizer_json().unwrap(),
    )
    .unwrap();
    let config = serde_json::json!({
        "add_bos_token": false,
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "chat_template": tok.chat_template().unwrap(),
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let hf = TextTokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(hf.eos_ids()[0], 2);
    assert_eq!(hf.bos_id(), Some(1));
    assert!(!hf.add_bos());
    for p in prompts() {
        assert_eq!(
            hf.encode(&p.rendered_text).unwrap(),
            p.prompt_ids,
            "prompt {}",
            p.name
        );
        if let Some(messages) = &p.messages {
            assert_eq!(hf.render_chat(messages, true).unwrap(), p.rendered_text);
        }
    }

    // add_bos_token=true prepends BOS; generation_config adds EOS ids
    let config = serde_json::json!({"add_bos_token": true, "bos_token": "<|endoftext|>"});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [2, 5]}"#,
    )
    .unwrap();
    let hf = TextTokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(hf.encode("Hello").unwrap(), vec![0, 19556]);
    assert!(hf.eos_ids().starts_with(&[2, 5]), "{:?}", hf.eos_ids());
    assert!(matches!(
        hf.render_chat(&[ChatMessage::user("hi")], true),
        Err(TokenizerError::NoChatTemplate)
    ));
}

#[test]
fn hf_folder_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = TextTokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    std::fs::write(
        dir.path().join("tokenizer.json"),
        tokenizer().to_tokenizer_json().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), "{not json").unwrap();
    let err = TextTokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<nope>"}"#,
    )
    .unwrap();
    let err = TextTokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("<nope>"), "{err}");
}
