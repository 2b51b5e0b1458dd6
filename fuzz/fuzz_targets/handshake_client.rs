//! Fuzz target: The client side of the handshake fed fuzzer bytes as the server's hello
//! (what anyone in the network path can send before keys exist).
//! The body is `muchat_fuzz::handshake_client` (fuzz/src/lib.rs), which
//! tests/fuzz_parsers.rs also runs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    muchat_fuzz::handshake_client(data);
});
