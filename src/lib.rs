//! muchat: a self-hosted multi-user chat server and terminal client with
//! encrypted traffic.
//!
//! # Layout
//!
//! The wire, bottom up:
//! * [`dh`]: RFC 3526 group 14 Diffie-Hellman with validated public values.
//! * [`keys`]: SHA-256 key derivation and the 3DES key rotation step.
//! * [`tdes`]: three-key 3DES-CBC with cached key schedules.
//! * [`content`]: message and file content, encrypted once by its sender.
//! * [`frame`]: the encrypted line format (3DES head, shared body, HMAC tag).
//! * [`connection`]: framed reading and writing over a socket.
//! * [`handshake`]: the plaintext opening that ends in session keys.
//! * [`names`], [`request`], [`event`]: what the frames say.
//!
//! The programs:
//! * [`server`]: accept loop, per-connection sessions, outboxes, state.
//! * [`client`]: a session library used by the REPL, scripts, tests and the
//!   load generator; [`command`] parses what a person types.
//!
//! Support: [`clock`], [`log`](mod@log), [`password`].

pub mod client;
pub mod clock;
pub mod command;
pub mod connection;
pub mod content;
pub mod dh;
pub mod event;
pub mod frame;
pub mod handshake;
pub mod identity;
pub mod keys;
pub mod names;
pub mod password;
pub mod request;
pub mod server;
pub mod store;
pub mod tdes;
pub mod text;
