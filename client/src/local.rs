//! Helpers of `--local` and of prompts: block splits and prompt tokens.

use anyhow::{Context, Result};
use sunswarm_models::{ChatMessage, TextTokenizer};

/// Parses `0-9,10-19,...` (inclusive ranges) into half-open ranges that must tile `0..n_layers`.
pub fn parse_split(spec: &str, n_layers: usize) -> Result<Vec<std::ops::Range<usize>>> {
    let mut ranges = Vec::new();
    let mut next = 0;
    for part in spec.split(',') {
        let (a, b) = part
            .split_once('-')
            .with_context(|| format!("split part {part:?} is not of the form A-B"))?;
        let a: usize = a
            .trim()
            .parse()
            .with_context(|| format!("split part {part:?}: bad start"))?;
        let b: usize = b
            .trim()
            .parse()
            .with_context(|| format!("split part {part:?}: bad end"))?;
        anyhow::ensure!(
            a == next && b >= a,
            "split {spec:?} must cover blocks in order without gaps (expected a range starting at {next})"
        );
        ranges.push(a..b + 1);
        next = b + 1;
    }
    anyhow::ensure!(
        next == n_layers,
        "split {spec:?} covers {next} blocks, the model has {n_layers}"
    );
    Ok(ranges)
}

/// Tokenizes the prompt as given, or as one user message of the chat template.
pub fn prompt_ids(tokenizer: &TextTokenizer, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
    let text = if chat {
        tokenizer.render_chat(
            &[ChatMessage {
                role: "user".into(),
                content: prompt.into(),
            }],
            true,
        )?
    } else {
        prompt.to_string()
    };
    let ids = tokenizer.encode(&text)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt produced no tokens");
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_must_tile_the_model() {
        assert_eq!(
            parse_split("0-9,10-19,20-29", 30).unwrap(),
            vec![0..10, 10..20, 20..30]
        );
        assert!(parse_split("0-9,11-29", 30).is_err());
        assert!(parse_split("0-9,10-19", 30).is_err());
        assert!(parse_split("0-9,x-29", 30).is_err());
    }
}
