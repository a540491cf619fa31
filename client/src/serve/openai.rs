//! The OpenAI API's request and response shapes, their validation, and stop sequences.
//!
//! Requests are read leniently where OpenAI clients send more than we use (unknown fields are
//! ignored) and strictly where a value would change the answer: a known field of the wrong type
//! or out of its range is a 400 naming the field, never a silently different generation.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sunswarm_models::ChatMessage;

use crate::engine::{Prompt, RouteEntry};
use crate::generate::{FinishReason, GenerateOptions};

/// An OpenAI error object with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    /// Seconds a client should wait before trying again (503, 429).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn bad_request(param: Option<&'static str>, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
            retry_after: None,
        }
    }

    pub fn unknown_model(model: &str, available: &[&str]) -> Self {
        ApiError {
            status: 404,
            message: format!(
                "the model {model:?} does not exist here; served models: {}",
                available.join(", ")
            ),
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: 503,
            message: message.into(),
            kind: "service_unavailable",
            param: None,
            code: Some("swarm_not_covered"),
            retry_after: Some(5),
        }
    }

    pub fn busy(limit: usize) -> Self {
        ApiError {
            status: 429,
            message: format!("the server is at its limit of {limit} concurrent requests"),
            kind: "rate_limit_error",
            param: None,
            code: Some("too_many_requests"),
            retry_after: Some(1),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn body(&self) -> Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// What both endpoints ask of a generation, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub model: String,
    pub prompt: Prompt,
    /// `None`: up to the server's default, within the model's context.
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

impl GenerationParams {
    pub fn options(&self, max_new_tokens: usize) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            ignore_eos: false,
            ..GenerateOptions::default()
        }
    }
}

/// The most stop sequences a request may give (OpenAI's limit).
pub const MAX_STOP: usize = 4;

type Fields = serde_json::Map<String, Value>;

fn object(body: &[u8]) -> Result<Fields, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(None, format!("the body is not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request(
            None,
            "the body must be a JSON object",
        )),
    }
}

/// A present, non-null field.
fn field<'a>(m: &'a Fields, name: &str) -> Option<&'a Value> {
    m.get(name).filter(|v| !v.is_null())
}

fn string(m: &Fields, name: &'static str) -> Result<Option<String>, ApiError> {
    match field(m, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad_request(
            Some(name),
            format!("{name} must be a string, got {}", type_name(other)),
        )),
    }
}

fn boolean(m: &Fields, name: &'static str) -> Result<bool, ApiError> {
    match field(m, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::bad_request(
            Some(name),
            format!("{name} must be a boolean, got {}", type_name(other)),
        )),
    }
}

fn number(m: &Fields, name: &'static str) -> Result<Option<f64>, ApiError> {
    match field(m, name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(Some(name), format!("{name} is not finite"))),
        Some(other) => Err(ApiError::bad_request(
            Some(name),
            format!("{name} must be a number, got {}", type_name(other)),
        )),
    }
}

fn integer(m: &Fields, name: &'static str) -> Result<Option<i64>, ApiError> {
    match field(m, name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| {
            ApiError::bad_request(Some(name), format!("{name} must be an integer, got {n}"))
        }),
        Some(other) => Err(ApiError::bad_request(
            Some(name),
            format!("{name} must be an integer, got {}", type_name(other)),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields both endpoints share.
fn common(m: &Fields, prompt: Prompt) -> Result<GenerationParams, ApiError> {
    let model = string(m, "model")?
        .ok_or_else(|| ApiError::bad_request(Some("model"), "model is required"))?;
    // max_completion_tokens is the newer name; either may be given.
    let max_tokens = match integer(m, "max_completion_tokens")? {
        Some(n) => Some(("max_completion_tokens", n)),
        None => integer(m, "max_tokens")?.map(|n| ("max_tokens", n)),
    };
    let max_tokens = match max_tokens {
        None => None,
        Some((name, n)) if n < 1 => {
            let param = if name == "max_tokens" {
                "max_tokens"
            } else {
                "max_completion_tokens"
            };
            return Err(ApiError::bad_request(
                Some(param),
                format!("{name} must be at least 1, got {n}"),
            ));
        }
        Some((_, n)) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let temperature = number(m, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            Some("temperature"),
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = number(m, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request(
            Some("top_p"),
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let seed = match integer(m, "seed")? {
        // Negative seeds are valid in OpenAI's API; their bits are as good a seed as any.
        Some(s) => s as u64,
        None => 0,
    };
    if let Some(n) = integer(m, "n")?
        && n != 1
    {
        return Err(ApiError::bad_request(
            Some("n"),
            format!("only n = 1 is served, got {n}"),
        ));
    }
    let stop = match field(m, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::bad_request(
                    Some("stop"),
                    format!("stop must hold strings, got {}", type_name(other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::bad_request(
                Some("stop"),
                format!(
                    "stop must be a string or an array of strings, got {}",
                    type_name(other)
                ),
            ));
        }
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::bad_request(
            Some("stop"),
            format!("at most {MAX_STOP} stop sequences, got {}", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad_request(
            Some("stop"),
            "stop sequences must not be empty",
        ));
    }
    let stream = boolean(m, "stream")?;
    let include_usage = match field(m, "stream_options") {
        None => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")?,
        Some(other) => {
            return Err(ApiError::bad_request(
                Some("stream_options"),
                format!("stream_options must be an object, got {}", type_name(other)),
            ));
        }
    };
    Ok(GenerationParams {
        model,
        prompt,
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        seed,
        stop,
        stream,
        include_usage,
    })
}

/// `POST /v1/chat/completions`.
pub fn parse_chat(body: &[u8]) -> Result<GenerationParams, ApiError> {
    let m = object(body)?;
    let messages = match field(&m, "messages") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_request(
                Some("messages"),
                "messages must not be empty",
            ));
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                Some("messages"),
                format!("messages must be an array, got {}", type_name(other)),
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                Some("messages"),
                "messages is required",
            ));
        }
    };
    let messages = messages
        .iter()
        .map(chat_message)
        .collect::<Result<Vec<_>, _>>()?;
    common(&m, Prompt::Chat(messages))
}

fn chat_message(v: &Value) -> Result<ChatMessage, ApiError> {
    let bad = |why: String| ApiError::bad_request(Some("messages"), why);
    let Value::Object(m) = v else {
        return Err(bad(format!(
            "a message must be an object, got {}",
            type_name(v)
        )));
    };
    let role = string(m, "role")
        .map_err(|e| bad(e.message))?
        .ok_or_else(|| bad("a message needs a role".into()))?;
    if !matches!(
        role.as_str(),
        "system" | "developer" | "user" | "assistant" | "tool"
    ) {
        return Err(bad(format!("unknown message role {role:?}")));
    }
    // The chat templates know `system`; OpenAI's newer `developer` role means the same.
    let role = if role == "developer" {
        "system".to_string()
    } else {
        role
    };
    let content = match field(m, "content") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        // Content parts: the text parts, joined; any other kind cannot be served by a text model.
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                let kind = p.get("type").and_then(Value::as_str);
                match (kind, p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(bad(format!(
                            "content part of type {} is not served (text only)",
                            kind.unwrap_or("?")
                        )));
                    }
                }
            }
            text
        }
        Some(other) => {
            return Err(bad(format!(
                "message content must be a string or an array of parts, got {}",
                type_name(other)
            )));
        }
    };
    Ok(ChatMessage { role, content })
}

/// `POST /v1/completions`.
pub fn parse_completion(body: &[u8]) -> Result<GenerationParams, ApiError> {
    let m = object(body)?;
    let prompt = match field(&m, "prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_request(
                Some("prompt"),
                "only one prompt string per request is served",
            ));
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                Some("prompt"),
                format!("prompt must be a string, got {}", type_name(other)),
            ));
        }
        None => {
            return Err(ApiError::bad_request(Some("prompt"), "prompt is required"));
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::bad_request(Some("prompt"), "the prompt is empty"));
    }
    common(&m, Prompt::Text(prompt))
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// What Sunswarm adds to a response: where the request went and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmInfo {
    pub route: Vec<RouteEntry>,
    pub failovers: usize,
    pub joules_per_token: Option<f64>,
    pub ttft_ms: f64,
    pub decode_tokens_per_s: f64,
}

/// Which endpoint a response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    pub fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completion => "cmpl-",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completions",
            Endpoint::Completion => "completions",
        }
    }
}

/// What every response and chunk of one request carries.
#[derive(Debug, Clone)]
pub struct Answer {
    pub endpoint: Endpoint,
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub model: String,
}

impl Answer {
    /// The whole answer of a non-streamed request.
    pub fn full(&self, text: &str, finish: FinishReason, usage: Usage, swarm: &SwarmInfo) -> Value {
        match self.endpoint {
            Endpoint::Chat => serde_json::json!({
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": finish,
                }],
                "usage": usage,
                "system_fingerprint": null,
                "sunswarm": swarm,
            }),
            Endpoint::Completion => serde_json::json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "text": text,
                    "logprobs": null,
                    "finish_reason": finish,
                }],
                "usage": usage,
                "sunswarm": swarm,
            }),
        }
    }

    /// One server-sent chunk of a streamed answer: text (the first chat chunk also carries the
    /// role), or the end with its finish reason.
    pub fn chunk(&self, text: Option<&str>, first: bool, finish: Option<FinishReason>) -> Value {
        match self.endpoint {
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                serde_json::json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "system_fingerprint": null,
                    "choices": [{
                        "index": 0,
                        "delta": delta,
                        "logprobs": null,
                        "finish_reason": finish,
                    }],
                })
            }
            Endpoint::Completion => serde_json::json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "text": text.unwrap_or(""),
                    "logprobs": null,
                    "finish_reason": finish,
                }],
            }),
        }
    }

    /// The last chunk of a stream that asked for `stream_options.include_usage`.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        };
        serde_json::json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        })
    }
}

/// Cuts generated text at the first stop sequence. Text that might still grow into a stop
/// sequence is held back until it cannot, so a stream never shows text that the whole answer
/// would not contain.
#[derive(Debug, Clone, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopFilter {
    pub fn new(stops: Vec<String>) -> Self {
        StopFilter {
            stops,
            held: String::new(),
            stopped: false,
        }
    }

    /// Feeds a piece; returns the text that is now safe to show, and `Break` once a stop
    /// sequence has been seen (the text returned then is everything before it).
    pub fn push(&mut self, piece: &str) -> (String, ControlFlow<()>) {
        if self.stopped {
            return (String::new(), ControlFlow::Break(()));
        }
        self.held.push_str(piece);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.stopped = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, ControlFlow::Break(()));
        }
        // Keep the longest tail that is a proper prefix of some stop sequence.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, ControlFlow::Continue(()))
    }

    /// The held-back text, once the generation ended without a stop sequence.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`, at a character
/// boundary of `text`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<GenerationParams, ApiError> {
        parse_chat(body.to_string().as_bytes())
    }

    #[test]
    fn reads_a_chat_request_with_its_options() {
        let p = chat(serde_json::json!({
            "model": "m", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}
            ],
            "max_completion_tokens": 5, "temperature": 0, "top_p": 0.5, "seed": -3,
            "stop": ["\n", "END"], "stream": true, "stream_options": {"include_usage": true},
            "user": "ignored", "frequency_penalty": 0
        }))
        .unwrap();
        assert_eq!(p.model, "m");
        assert_eq!(p.max_tokens, Some(5));
        assert_eq!((p.temperature, p.top_p), (0.0, 0.5));
        assert_eq!(p.seed, (-3i64) as u64);
        assert_eq!(p.stop, vec!["\n", "END"]);
        assert!(p.stream && p.include_usage);
        let Prompt::Chat(m) = p.prompt else {
            panic!("not chat")
        };
        assert_eq!(m[1].content, "hi there");
        // Defaults.
        let p =
            chat(serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
                .unwrap();
        assert_eq!(
            (p.max_tokens, p.temperature, p.stream, p.stop.len()),
            (None, 1.0, false, 0)
        );
    }

    #[test]
    fn refuses_what_would_change_the_answer_naming_the_field() {
        let base =
            || serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let cases: Vec<(&str, Value, &str)> = vec![
            ("max_tokens", serde_json::json!(-1), "max_tokens"),
            ("max_tokens", serde_json::json!(0), "max_tokens"),
            ("max_tokens", serde_json::json!("ten"), "max_tokens"),
            (
                "max_completion_tokens",
                serde_json::json!(1.5),
                "max_completion_tokens",
            ),
            ("temperature", serde_json::json!(3), "temperature"),
            ("temperature", serde_json::json!("hot"), "temperature"),
            ("top_p", serde_json::json!(0), "top_p"),
            ("n", serde_json::json!(2), "n"),
            ("stop", serde_json::json!(7), "stop"),
            ("stop", serde_json::json!(["a", "b", "c", "d", "e"]), "stop"),
            ("stream", serde_json::json!("yes"), "stream"),
            ("seed", serde_json::json!("x"), "seed"),
            ("messages", serde_json::json!([]), "messages"),
            ("messages", serde_json::json!("hi"), "messages"),
            (
                "messages",
                serde_json::json!([{"role": "wizard", "content": "x"}]),
                "messages",
            ),
            (
                "messages",
                serde_json::json!([{"role": "user", "content": [{"type": "image_url"}]}]),
                "messages",
            ),
            ("model", serde_json::json!(5), "model"),
        ];
        for (name, value, param) in cases {
            let mut body = base();
            body[name] = value.clone();
            let err = chat(body).unwrap_err();
            assert_eq!(err.status, 400, "{name}={value}");
            assert_eq!(err.param, Some(param), "{name}={value}: {}", err.message);
        }
        assert_eq!(parse_chat(b"{not json").unwrap_err().status, 400);
        assert_eq!(parse_chat(b"[1]").unwrap_err().status, 400);
        assert_eq!(
            chat(serde_json::json!({"messages": [{"role": "user", "content": "x"}]}))
                .unwrap_err()
                .param,
            Some("model")
        );
    }

    #[test]
    fn reads_completion_prompts() {
        let p = parse_completion(br#"{"model":"m","prompt":["once"],"max_tokens":3}"#).unwrap();
        assert_eq!(p.prompt, Prompt::Text("once".into()));
        for bad in [
            r#"{"model":"m","prompt":["a","b"]}"#,
            r#"{"model":"m","prompt":[1,2]}"#,
            r#"{"model":"m","prompt":""}"#,
            r#"{"model":"m"}"#,
        ] {
            assert_eq!(
                parse_completion(bad.as_bytes()).unwrap_err().param,
                Some("prompt"),
                "{bad}"
            );
        }
    }

    #[test]
    fn stop_filter_holds_back_possible_starts_and_cuts_at_the_stop() {
        let mut f = StopFilter::new(vec!["END".into(), "\n\n".into()]);
        assert_eq!(
            f.push("hello E"),
            ("hello ".into(), ControlFlow::Continue(()))
        );
        assert_eq!(f.push("N"), (String::new(), ControlFlow::Continue(())));
        assert_eq!(
            f.push("x world\n"),
            ("ENx world".into(), ControlFlow::Continue(()))
        );
        assert_eq!(f.push("\nmore"), (String::new(), ControlFlow::Break(())));
        assert!(f.stopped());
        let mut f = StopFilter::new(vec!["END".into()]);
        assert_eq!(f.push("abEN"), ("ab".into(), ControlFlow::Continue(())));
        assert_eq!(f.push("Dzz"), (String::new(), ControlFlow::Break(())));
        let mut f = StopFilter::new(vec!["stop".into()]);
        assert_eq!(f.push("a st"), ("a ".into(), ControlFlow::Continue(())));
        assert_eq!(f.finish(), "st");
        // No stops: everything passes at once; multi-byte text is never split.
        let mut f = StopFilter::new(Vec::new());
        assert_eq!(f.push("héllo"), ("héllo".into(), ControlFlow::Continue(())));
        let mut f = StopFilter::new(vec!["é!".into()]);
        assert_eq!(
            f.push("caf\u{e9}"),
            ("caf".into(), ControlFlow::Continue(()))
        );
        assert_eq!(f.push("!"), ("".into(), ControlFlow::Break(())));
    }

    #[test]
    fn responses_have_openai_shapes() {
        let info = SwarmInfo {
            route: Vec::new(),
            failovers: 0,
            joules_per_token: None,
            ttft_ms: 1.0,
            decode_tokens_per_s: 2.0,
        };
        let answer = |endpoint| Answer {
            endpoint,
            id: "x".into(),
            created: 7,
            model: "m".into(),
        };
        let r = answer(Endpoint::Chat).full("Paris", FinishReason::Stop, Usage::new(3, 2), &info);
        assert_eq!(r["choices"][0]["message"]["content"], "Paris");
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        assert_eq!(r["usage"]["total_tokens"], 5);
        let c = answer(Endpoint::Chat).chunk(Some("Pa"), true, None);
        assert_eq!(c["choices"][0]["delta"]["role"], "assistant");
        assert!(c["choices"][0]["finish_reason"].is_null());
        let end = answer(Endpoint::Completion).chunk(None, false, Some(FinishReason::Length));
        assert_eq!(end["choices"][0]["finish_reason"], "length");
        let e = ApiError::unknown_model("x", &["m"]).body();
        assert_eq!(e["error"]["code"], "model_not_found");
    }
}
