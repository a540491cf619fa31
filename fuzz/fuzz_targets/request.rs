//! Fuzzes `codec::decode::<Request>`, the decoder of every message a hop receives on an
//! activation stream. Asserts: it returns Ok or Err and never panics; a value it accepts encodes
//! again and decodes to the same value (round trip).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sunswarm_protocol::{Request, decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode::<Request>(data) {
        let bytes = encode(&msg).expect("an accepted request encodes");
        let back = decode::<Request>(&bytes).expect("a re-encoded request decodes");
        assert_eq!(back, msg);
    }
});
