//! Fuzz target: The server side of the handshake fed fuzzer bytes as the client's hello,
//! with a fixed static key (what any TCP client can send first).
//! The body is `muchat_fuzz::handshake_server` (fuzz/src/lib.rs), which
//! tests/fuzz_parsers.rs also runs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    muchat_fuzz::handshake_server(data);
});
