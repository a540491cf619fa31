//! `swarm-client serve` against a real 3-node testnet of SmolLM2: a real OpenAI client library
//! gets exactly what `swarm-client generate --local --chat` generates, streamed or not and eight
//! at once; a client that goes away frees its session on every peer; every error is an OpenAI
//! error object with its status; the dashboard, loaded in headless Chromium, shows the peers and
//! the coverage, and the gap once a node stops.
//!
//! Builds the swarm binaries on first use, unless SUNSWARM_NO_BUILD=1.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use common::{build_binaries, opts, require_real_model};
use futures::StreamExt;
use sunswarm_testnet::net::{Managed, Split, Testnet, find_binary};

const MODEL: &str = "smollm2-135m";
const MAX_TOKENS: u32 = 24;

/// A running `swarm-client serve`.
struct Server {
    _proc: Managed,
    url: String,
}

fn serve(net: &Testnet, extra: &[&str]) -> Server {
    let mut cmd = Command::new(find_binary("swarm-client").unwrap());
    cmd.args([
        "serve",
        "--bootstrap",
        &net.bootstrap,
        "--listen",
        "127.0.0.1:0",
        "--model",
        MODEL,
        "--refresh-ms",
        "500",
    ])
    .args(extra);
    let log = net
        .log_dir
        .join(format!("serve-{}.log", std::process::id()));
    let mut proc = Managed::spawn("serve", cmd, &log).unwrap();
    let url = proc
        .wait_line("SERVING ", Duration::from_secs(120))
        .unwrap()
        .trim()
        .to_string();
    Server { _proc: proc, url }
}

/// What `swarm-client generate --local --chat` answers to `prompt`.
fn local_answer(prompt: &str) -> String {
    let json = common::client_json(&[
        "--local",
        "--model",
        MODEL,
        "--chat",
        "--prompt",
        prompt,
        "--max-new-tokens",
        &MAX_TOKENS.to_string(),
    ]);
    json["text"].as_str().unwrap().to_string()
}

fn openai(server: &Server) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", server.url))
            .with_api_key("unused"),
    )
}

fn chat_request(
    prompt: &str,
    max_tokens: u32,
) -> async_openai::types::chat::CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(MODEL)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(prompt)
            .build()
            .unwrap()
            .into()])
        .max_completion_tokens(max_tokens)
        .temperature(0.0)
        .build()
        .unwrap()
}

/// Streams a chat answer and returns its text and finish reason.
async fn streamed(client: &Client<OpenAIConfig>, prompt: &str) -> (String, String) {
    let mut stream = client
        .chat()
        .create_stream(chat_request(prompt, MAX_TOKENS))
        .await
        .unwrap();
    let mut text = String::new();
    let mut finish = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for c in chunk.choices {
            if let Some(t) = c.delta.content {
                text.push_str(&t);
            }
            if let Some(f) = c.finish_reason {
                finish = format!("{f:?}");
            }
        }
    }
    (text, finish)
}

/// GET `url` and parse the JSON body (any status).
fn get_json(url: &str) -> serde_json::Value {
    let mut resp = ureq::get(url)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

/// POSTs `body` and returns the status, the Retry-After header and the JSON body.
fn post(url: &str, body: &str) -> (u16, Option<String>, serde_json::Value) {
    let mut resp = ureq::post(url)
        .config()
        .http_status_as_error(false)
        .build()
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.body_mut().read_to_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (resp.status().as_u16(), retry, json)
}

/// Polls the server's view of the peers until `want` holds of their active session counts.
fn wait_for_sessions(server_url: &str, want: impl Fn(&[u64]) -> bool, what: &str) -> Vec<u64> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let v = get_json(&format!("{server_url}/v1/swarm"));
        let active: Vec<u64> = v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["active_sessions"].as_u64().unwrap())
            .collect();
        if active.len() == 3 && want(&active) {
            return active;
        }
        assert!(
            Instant::now() < until,
            "peers' sessions never became {what}: {active:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_client_gets_the_local_answers_through_the_swarm() {
    build_binaries();
    require_real_model();
    let net = Testnet::start(&opts(MODEL, Split::Even, 3, 30.0))
        .await
        .unwrap();
    let server = serve(&net, &[]);
    let client = openai(&server);

    let models = client.models().list().await.unwrap();
    assert!(
        models.data.iter().any(|m| m.id == MODEL),
        "{:?}",
        models.data
    );

    let prompts = [
        "What is the capital of France?",
        "Name three colors.",
        "What is 2 + 2?",
    ];
    let local: Vec<String> =
        tokio::task::spawn_blocking(move || prompts.iter().map(|p| local_answer(p)).collect())
            .await
            .unwrap();
    assert!(local[0].contains("Paris"), "{local:?}");

    let whole = client
        .chat()
        .create(chat_request(prompts[0], MAX_TOKENS))
        .await
        .unwrap();
    let choice = &whole.choices[0];
    assert_eq!(choice.message.content.as_deref(), Some(local[0].as_str()));
    let usage = whole.usage.unwrap();
    assert!(usage.prompt_tokens > 10 && usage.completion_tokens > 0);

    let (text, finish) = streamed(&client, prompts[0]).await;
    assert_eq!(text, local[0]);
    assert!(!finish.is_empty(), "no finish reason in the stream");

    // Eight streams at once, all with their exact answers.
    let many = futures::future::join_all((0..8).map(|i| {
        let client = client.clone();
        async move { streamed(&client, prompts[i % 3]).await.0 }
    }))
    .await;
    for (i, text) in many.iter().enumerate() {
        assert_eq!(text, &local[i % 3], "stream {i}");
    }

    // A reader that goes away frees its session on every peer. Counting never meets an end of
    // sequence, so the session is still open when the reader leaves.
    let body = serde_json::json!({
        "model": MODEL, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 2000,
        "temperature": 0, "stream": true,
    })
    .to_string();
    let url = format!("{}/v1/completions", server.url);
    let server_url = server.url.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let mut resp = ureq::post(&url)
            .header("content-type", "application/json")
            .send(&body)
            .unwrap();
        let mut reader = resp.body_mut().as_reader();
        let mut buf = [0u8; 256];
        let _ = std::io::Read::read(&mut reader, &mut buf).unwrap();
        let seen = wait_for_sessions(&server_url, |a| a.iter().all(|&n| n >= 1), "open");
        drop(reader);
        drop(resp);
        seen
    })
    .await
    .unwrap();
    assert!(seen.iter().all(|&n| n >= 1), "{seen:?}");
    let t = Instant::now();
    wait_for_sessions(&server.url, |a| a.iter().all(|&n| n == 0), "closed");
    eprintln!("sessions freed {:?} after the reader left", t.elapsed());
}

fn chromium() -> Option<&'static str> {
    let path = "/usr/bin/chromium";
    if std::path::Path::new(path).is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("SUNSWARM_REQUIRE_CHROMIUM").is_none(),
        "SUNSWARM_REQUIRE_CHROMIUM is set but {path} is missing (apt-get install chromium)"
    );
    None
}

/// The dashboard as headless Chromium renders it after its script has run, without the script.
fn rendered_dashboard(browser: &str, url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = tempfile_dir();
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=4000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(p) => cmd
            .arg("--window-size=1280,900")
            .arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    dom.split("<script").next().unwrap_or_default().to_string()
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sunswarm-chromium-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_openai_errors_and_the_dashboard_shows_the_swarm() {
    build_binaries();
    require_real_model();
    let mut net = Testnet::start(&opts(MODEL, Split::Even, 3, 30.0))
        .await
        .unwrap();
    let server = serve(&net, &["--max-concurrent", "1"]);
    let chat = format!("{}/v1/chat/completions", server.url);
    let msg = |extra: serde_json::Value| {
        let mut body = serde_json::json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 4,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body.to_string()
    };
    let long_prompt = "hello ".repeat(9000);
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        (
            msg(serde_json::json!({"max_tokens": -5})),
            400,
            Some("max_tokens"),
        ),
        (
            msg(serde_json::json!({"temperature": "hot"})),
            400,
            Some("temperature"),
        ),
        (msg(serde_json::json!({"n": 3})), 400, Some("n")),
        (
            msg(serde_json::json!({"messages": [{"role": "user", "content": long_prompt}]})),
            400,
            Some("messages"),
        ),
        ("{\"model\": ".to_string(), 400, None),
        (
            msg(serde_json::json!({"model": "gpt-5"})),
            404,
            Some("model"),
        ),
    ];
    for (body, status, param) in &cases {
        let (got, _, json) = post(&chat, body);
        assert_eq!(got, *status, "{}: {json}", &body[..body.len().min(120)]);
        let err = &json["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
        assert!(err["type"].is_string(), "{json}");
        assert_eq!(err["param"].as_str(), *param, "{json}");
    }
    let (got, _, json) = post(
        &format!("{}/v1/completions", server.url),
        &serde_json::json!({"model": MODEL, "prompt": ["a", "b"]}).to_string(),
    );
    assert_eq!(
        (got, json["error"]["param"].as_str()),
        (400, Some("prompt"))
    );

    // At the concurrency limit (1 here), another request is told to come back.
    let url = format!("{}/v1/completions", server.url);
    let body = serde_json::json!({
        "model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 2000, "stream": true,
    })
    .to_string();
    let busy = {
        let mut resp = ureq::post(&url)
            .header("content-type", "application/json")
            .send(&body)
            .unwrap();
        let mut reader = resp.body_mut().as_reader();
        let mut buf = [0u8; 64];
        let _ = std::io::Read::read(&mut reader, &mut buf).unwrap();
        post(&chat, &msg(serde_json::json!({})))
    };
    assert_eq!(busy.0, 429, "{}", busy.2);
    assert!(busy.1.is_some(), "429 without Retry-After");
    // The stream above was dropped: its place comes back and requests are served again.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, _, json) = post(&chat, &msg(serde_json::json!({})));
        if got == 200 {
            assert!(json["choices"][0]["message"]["content"].is_string());
            break;
        }
        assert!(Instant::now() < until, "never served again: {got} {json}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let metrics = ureq::get(&format!("{}/metrics", server.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("sunswarm_requests_total{endpoint=\"chat.completions\",status=\"400\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sunswarm_requests_total{endpoint=\"chat.completions\",status=\"404\"} 1")
    );
    assert!(metrics.contains("sunswarm_time_to_first_token_seconds_bucket"));

    // The dashboard: every peer and the full coverage; after a node leaves, the gap.
    let peers: Vec<String> = net
        .node_lines()
        .iter()
        .filter_map(|l| l.split("peer=").nth(1))
        .map(|p| p.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(peers.len(), 3, "{:?}", net.node_lines());
    if let Some(browser) = chromium() {
        let dom = rendered_dashboard(browser, &server.url, None);
        for p in &peers {
            assert!(
                dom.contains(&format!("data-peer=\"{p}\"")),
                "peer {p} missing:\n{dom}"
            );
        }
        assert!(dom.contains("data-covered=\"yes\""), "{dom}");
        assert!(dom.contains("all 30 blocks covered"), "{dom}");
        // Loopback nodes listen directly: each is shown as public.
        assert_eq!(dom.matches("data-reach=\"public\"").count(), 3, "{dom}");
    }
    net.stop_node(2, false);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let v = get_json(&format!("{}/v1/swarm", server.url));
        if v["models"][0]["covered"] == false {
            assert_eq!(v["models"][0]["gaps"], serde_json::json!([[20, 30]]), "{v}");
            break;
        }
        assert!(Instant::now() < until, "the gap never showed: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(browser) = chromium() {
        let dom = rendered_dashboard(browser, &server.url, None);
        assert!(dom.contains("data-covered=\"no\""), "{dom}");
        assert!(dom.contains("gap: blocks 20-29"), "{dom}");
        assert!(
            !dom.contains(&format!("data-peer=\"{}\"", peers[2])),
            "{dom}"
        );
    }
    // The swarm cannot serve the model now: 503 with a time to come back, and no model listed.
    let (got, retry, json) = post(&chat, &msg(serde_json::json!({})));
    assert_eq!(got, 503, "{json}");
    assert!(retry.is_some(), "503 without Retry-After");
    assert_eq!(json["error"]["code"], "swarm_not_covered");
    let models = get_json(&format!("{}/v1/models", server.url));
    assert_eq!(models["data"], serde_json::json!([]), "{models}");
}
