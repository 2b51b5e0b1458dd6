//! Fuzz target: Opener::open with fixed session keys: raw lines, lines with valid tags
//! over arbitrary contents, arbitrary heads encrypted or in clear (`=` heads),
//! and one-bit flips of sealed lines.
//! The body is `muchat_fuzz::frame_decoder` (fuzz/src/lib.rs), which
//! tests/fuzz_parsers.rs also runs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    muchat_fuzz::frame_decoder(data);
});
