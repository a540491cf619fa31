//! Fuzzes `io::read_message::<_, Request>`, the length-prefixed framing a node reads from a libp2p
//! stream: the input is the whole stream, read frame after frame until the first error. Asserts:
//! every read returns Ok or Err and never panics, and reading ends (each frame consumes at least
//! its 4-byte length).
#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use sunswarm_protocol::Request;
use sunswarm_protocol::io::read_message;

fuzz_target!(|data: &[u8]| {
    block_on(async {
        let mut stream = Cursor::new(data);
        let mut buf = Vec::new();
        let mut frames = 0usize;
        while read_message::<_, Request>(&mut stream, &mut buf)
            .await
            .is_ok()
        {
            frames += 1;
            assert!(frames * 4 <= data.len(), "more frames than length prefixes");
        }
    });
});
