//! Fuzz target: ServerMessage::parse of a fuzzer-chosen head, optional body (plain or
//! a GMSG envelope) and clear-head flag (what a server can send a client); replies
//! typed as every kind, GMSG envelopes opened.
//! The body is `muchat_fuzz::server_message` (fuzz/src/lib.rs), which
//! tests/fuzz_parsers.rs also runs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    muchat_fuzz::server_message(data);
});
