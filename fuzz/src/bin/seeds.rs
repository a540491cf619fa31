//! Writes a few valid encoded messages into `corpus/<target>/seed-*` as starting points for the
//! fuzzers. Run from `fuzz/`: `cargo +nightly run --bin seeds`. Deterministic, so re-running
//! rewrites the same files.

#![allow(dead_code, unused_imports)]

use std::fs;
use std::path::Path;

// The GGUF reader and writer of `models/`, as the `gguf` target includes them.
#[path = "../../../models/src/ggml.rs"]
mod ggml;
#[path = "../../../models/src/gguf.rs"]
mod gguf;
#[path = "../../../models/src/quant.rs"]
mod quant;

use sunswarm_protocol::{
    Announcement, BlockRange, DType, EnergyState, ErrorKind, Forward, Hop, HopTiming, OpenSession,
    PowerSetting, Receipt, Request, Response, SessionId, SignedAnnouncement, TensorFrame,
    TokenDraw, WireError, encode,
};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn frame(rows: u32, cols: u32, dtype: DType) -> TensorFrame {
    let values: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.25 - 1.0).collect();
    TensorFrame::from_f32(&[rows, cols], &values, dtype).unwrap()
}

/// Small GGUF files with the metadata a model load reads and tensors of each type it decodes.
fn gguf_seeds() {
    use ggml::GgmlType;
    use gguf::{GgufTensorData, GgufValue, gguf_bytes};
    let metadata = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String("llama".into()),
        ),
        ("llama.block_count".to_string(), GgufValue::U32(2)),
        ("llama.rope.freq_base".to_string(), GgufValue::F32(10000.0)),
        (
            "tokenizer.ggml.tokens".to_string(),
            GgufValue::Array(vec![
                GgufValue::String("a".into()),
                GgufValue::String("<|im_end|>".into()),
            ]),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(3)]),
        ),
        (
            "nested".to_string(),
            GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::Bool(true)])]),
        ),
    ];
    let values: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 8.0).collect();
    let mut tensors = vec![GgufTensorData::f32("f32", vec![8, 8], &values).unwrap()];
    for (name, ty) in [
        ("f16", GgmlType::F16),
        ("bf16", GgmlType::BF16),
        ("q8_0", GgmlType::Q8_0),
        ("q4_0", GgmlType::Q4_0),
        ("q4_1", GgmlType::Q4_1),
    ] {
        tensors.push(GgufTensorData::encode(name, vec![32, 2], ty, &values).unwrap());
    }
    write("gguf", "model", &gguf_bytes(&metadata, &tensors).unwrap());
    write(
        "gguf",
        "metadata-only",
        &gguf_bytes(&metadata, &[]).unwrap(),
    );
}

/// Small safetensors files: one tensor of each dtype the loader takes, and one it refuses.
fn safetensors_seeds() {
    let mut tensors: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "a",
            "F32",
            (0..8u32).flat_map(|i| (i as f32).to_le_bytes()).collect(),
        ),
        ("b", "F16", vec![0, 60, 0, 64, 0, 66, 0, 68]),
        ("c", "BF16", vec![128, 63, 0, 64, 64, 64, 128, 64]),
        ("d", "I64", vec![1, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, (name, dtype, bytes)) in tensors.iter_mut().enumerate() {
        let elements = match *dtype {
            "F32" => bytes.len() / 4,
            "I64" => bytes.len() / 8,
            _ => bytes.len() / 2,
        };
        let start = data.len();
        data.extend_from_slice(bytes);
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{elements}],\"data_offsets\":[{start},{}]}}",
            data.len()
        ));
    }
    header.push('}');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    write("safetensors", "four-dtypes", &file);
}

fn main() {
    gguf_seeds();
    safetensors_seeds();
    let session = SessionId([7; 16]);
    let route: Vec<Hop> = (0..3)
        .map(|i| Hop {
            peer_id: vec![i as u8 + 1; 38],
            addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 4000 + i)],
            blocks: BlockRange::new(i * 10, i * 10 + 10).unwrap(),
        })
        .collect();
    let requests = [
        Request::Open(OpenSession {
            session,
            model_id: [3; 32],
            route,
            hop: 1,
            dtype: DType::F32,
            max_tokens: 2048,
            client: vec![9; 38],
            token_deadline_us: 0,
            resume: false,
        }),
        Request::Forward(Forward {
            session,
            step: 4,
            position: 12,
            hidden: frame(2, 3, DType::F32),
            receipts: vec![receipt(0)],
            stepwise: false,
            tap: true,
            taps: vec![frame(1, 3, DType::F32)],
            draw: None,
        }),
        Request::Forward(Forward {
            session,
            step: 5,
            position: 14,
            hidden: frame(1, 4, DType::F16),
            receipts: Vec::new(),
            stepwise: false,
            tap: false,
            taps: Vec::new(),
            draw: Some(TokenDraw {
                temperature: 0.7,
                top_p: 0.9,
                state: 42,
            }),
        }),
        Request::Attach { session },
        Request::Close { session },
    ];
    let mut stream = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let bytes = encode(r).unwrap();
        write("request", &i.to_string(), &bytes);
        stream.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        stream.extend_from_slice(&bytes);
    }
    write("framed", "session", &stream);

    let responses = [
        Response::Opened { session },
        Response::Hidden {
            session,
            step: 9,
            hidden: frame(2, 3, DType::F32),
            receipts: vec![receipt(0), receipt(1)],
            taps: Vec::new(),
            token: Some(1234),
        },
        Response::Error(WireError {
            kind: ErrorKind::PowerSaving,
            hop: 2,
            message: "battery at 12 %".into(),
        }),
        Response::Closed { session },
    ];
    for (i, r) in responses.iter().enumerate() {
        write("response", &i.to_string(), &encode(r).unwrap());
    }

    let announcement = Announcement {
        peer_id: vec![0, 36, 8, 1, 18, 32, 7, 7, 7],
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        model_id: [9; 32],
        n_layers: 30,
        blocks: BlockRange::new(10, 20).unwrap(),
        backend: "cpu".into(),
        throughput: 120.5,
        max_sessions: 8,
        active_sessions: 1,
        energy: EnergyState {
            battery_level: 0.42,
            harvest_w: 12.5,
            power_mode: PowerSetting::Dynamic { watts: 30 },
            power_saving: false,
            max_job_rate: 0.31,
            mode_index: 1,
            critical: false,
            saving_risk: 0.05,
            takes_job: true,
        },
        timestamp_ms: 1_000_000,
        expires_ms: 1_030_000,
    };
    // On the wire an announcement is signed; the fuzzer decodes the envelope, not the key.
    let signed = |announcement: Announcement| SignedAnnouncement {
        announcement,
        signature: vec![0x5a; 64],
    };
    write(
        "announcement",
        "dynamic",
        &encode(&signed(announcement.clone())).unwrap(),
    );
    let mains = Announcement {
        energy: EnergyState::mains(),
        ..announcement
    };
    write("announcement", "mains", &encode(&signed(mains)).unwrap());

    // tensor_frame input: dim (u16 LE), mode byte (bit 0: re-seal the checksum), postcard frame
    for (name, f, dim) in [
        ("f32", frame(2, 3, DType::F32), 3u16),
        ("f16", frame(1, 4, DType::F16), 4),
    ] {
        let mut bytes = dim.to_le_bytes().to_vec();
        bytes.push(0);
        bytes.extend_from_slice(&postcard::to_allocvec(&f).unwrap());
        write("tensor_frame", name, &bytes);
    }
}

fn receipt(hop: u16) -> Receipt {
    Receipt {
        timing: HopTiming {
            hop,
            compute_us: 10,
            total_us: 12,
            kept_rows: 0,
        },
        signer: vec![1; 38],
        route: [2; 32],
        input: [3; 32],
        output: [4; 32],
        token: (hop == 1).then_some(1234),
        signature: vec![5; 64],
    }
}
