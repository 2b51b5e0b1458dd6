pub mod content;
pub mod dh;
pub mod frame;
pub mod keys;
pub mod tdes;
