//! Authentication: the factors and proofs the consultation path's first
//! stage checks before anything else.
//!
//! Each module verifies one kind of evidence and returns a typed answer; none
//! of them reads a clock or a database of its own (callers pass "now" and
//! the state they keep), so every rule here is testable without waiting.

pub mod access_token;
pub mod activation;
pub mod bench;
pub mod client_assertion;
pub mod dpop;
pub mod jose;
pub mod lockout;
pub mod oidc;
pub mod passkey;
pub mod password;
pub mod totp;
