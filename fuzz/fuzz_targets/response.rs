//! Fuzzes `codec::decode::<Response>`, the decoder of every answer that travels back up a route
//! (hidden states, timings, errors). Asserts: it returns Ok or Err and never panics; a value it
//! accepts encodes again and decodes to the same value (round trip).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sunswarm_protocol::{Response, decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode::<Response>(data) {
        let bytes = encode(&msg).expect("an accepted response encodes");
        let back = decode::<Response>(&bytes).expect("a re-encoded response decodes");
        assert_eq!(back, msg);
    }
});
