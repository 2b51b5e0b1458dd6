//! Untrusted text made safe to show on a terminal.
//!
//! Everything another user (or an unauthenticated peer) chose passes
//! through [`sanitize`] before it is printed, so it cannot move the cursor,
//! change colours, retitle the window or reorder the line.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters that reorder text on screen (Trojan Source style tricks).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Replaces control characters (C0, DEL, C1, including newlines) and
/// bidirectional overrides with visible escapes like `\x1b` or `\u{202e}`.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || is_bidi_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_cannot_reach_the_terminal() {
        assert_eq!(sanitize("plain text"), "plain text");
        assert_eq!(sanitize("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(sanitize("bell\x07\r\n"), "bell\\x07\\x0d\\n");
        assert_eq!(sanitize("c1\u{9b}31m"), "c1\\u{9b}31m");
        assert_eq!(sanitize("rtl\u{202e}txt"), "rtl\\u{202e}txt");
    }
}
