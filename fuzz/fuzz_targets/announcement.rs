//! Fuzzes `codec::decode::<SignedAnnouncement>`, the decoder of DHT records and gossip messages
//! (any peer can publish them). Asserts: it returns Ok or Err and never panics; a value it accepts
//! encodes again and decodes to the same value (round trip; validation refuses NaN, so
//! `PartialEq` on the f32 fields is exact).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sunswarm_protocol::{SignedAnnouncement, decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode::<SignedAnnouncement>(data) {
        let bytes = encode(&msg).expect("an accepted announcement encodes");
        let back = decode::<SignedAnnouncement>(&bytes).expect("a re-encoded announcement decodes");
        assert_eq!(back, msg);
    }
});
