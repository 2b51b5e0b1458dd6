//! Fuzz target: Request::parse of a fuzzer-chosen head and optional body (what every
//! client can send the server after the handshake).
//! The body is `muchat_fuzz::request_parser` (fuzz/src/lib.rs), which
//! tests/fuzz_parsers.rs also runs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    muchat_fuzz::request_parser(data);
});
