//! Incremental detokenization for streaming: text is released as soon as it is complete, and
//! the bytes of a character split across tokens are held back until the character is whole.

use super::{TextTokenizer, TokenizerError};

const REPLACEMENT: char = '\u{FFFD}';

/// Turns generated ids into text pieces, one push at a time.
///
/// It decodes a small window of ids (the last id already released, as context, plus the ids not
/// yet released) and releases what the window adds beyond the context, unless that ends in an
/// incomplete character. Decoding with one id of context keeps decoders that look at the
/// previous token (SentencePiece's leading space) correct.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a TextTokenizer,
    skip_special: bool,
    /// Context ids (already released) followed by pending ids.
    window: Vec<u32>,
    /// How many ids at the front of `window` are context.
    context_len: usize,
    /// What the context decodes to.
    context_text: String,
}

impl<'a> StreamDecoder<'a> {
    pub(super) fn new(tokenizer: &'a TextTokenizer) -> Self {
        StreamDecoder {
            tokenizer,
            skip_special: false,
            window: Vec::new(),
            context_len: 0,
            context_text: String::new(),
        }
    }

    /// Leaves special tokens (`<|im_end|>`) out of the text.
    pub fn skip_special_tokens(mut self, skip: bool) -> Self {
        self.skip_special = skip;
        self
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.tokenizer.decode_with(ids, self.skip_special)
    }

    /// Adds one generated id; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        // check before touching state, so a bad id leaves the decoder usable
        self.decode(&[id])?;
        self.window.push(id);
        let text = self.decode(&self.window)?;
        if text.ends_with(REPLACEMENT) {
            // the last token ends inside a character; wait for the rest of its bytes
            return Ok(None);
        }
        Ok(self.release(text))
    }

    /// Releases whatever is still held back (an incomplete character shows as U+FFFD).
    pub fn finish(&mut self) -> Result<Option<String>, TokenizerError> {
        if self.window.len() == self.context_len {
            return Ok(None);
        }
        let text = self.decode(&self.window)?;
        let out = self.release(text);
        self.window.clear();
        self.context_len = 0;
        self.context_text.clear();
        Ok(out)
    }

    /// Emits `text` beyond the context and makes the last id the new context.
    fn release(&mut self, text: String) -> Option<String> {
        let new = match text.strip_prefix(self.context_text.as_str()) {
            Some(rest) => rest.to_string(),
            // a decoder rewrote the context (rare); release only what differs
            None => {
                let common = text
                    .char_indices()
                    .zip(self.context_text.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(text.len().min(self.context_text.len()), |((i, _), _)| i);
                text[common..].to_string()
            }
        };
        let last = self.window.last().copied();
        self.window.clear();
        self.window.extend(last);
        self.context_len = self.window.len();
        self.context_text = self.decode(&self.window).unwrap_or_default();
        (!new.is_empty()).then_some(new)
    }
}
