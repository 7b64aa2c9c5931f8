//! Rempart's server, wired in one place.
//!
//! [`App::build`] opens the registry's stores, the keys, the audit ledger,
//! the policies and the guard, strings them into the consultation path
//! (`rempart_consult::Consultation`) and serves it through the HTTP edge
//! (`rempart_web`). `rempart serve`, `demo`, `drill`, every benchmark and
//! every HTTP test start through it, so that what is tested is what is
//! deployed. [`Location`] is the one place a data directory or database
//! URL becomes opened stores.
//!
//! ```text
//! ServerConfig ─▶ App::build ─▶ App ─▶ App::serve(listener, stop) / App::spawn(listener)
//!                                  └─▶ App::close (a job that serves nothing)
//! ```

pub mod alerts;
mod app;
mod location;

pub use app::{App, BuildError, GuardChoice, Policies, Running, ServeError, ServerConfig};
pub use location::{LedgerAt, LedgerKeyFrom, LedgerSource, Location, RegistryAt, Scratch, Storage};
