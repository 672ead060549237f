//! The pure decision core: (customer state, input, now, config) → (new state, effects).
//! **Invariant:** no I/O, no clock, no randomness, no tokio — time comes in as `now_ms`,
//! so every replica and every replay makes the same decisions.

pub mod audience;
pub mod config;
pub mod consent;
pub mod expr;
pub mod guard;
pub mod identity;
pub mod inbox;
pub mod journey;
pub mod messaging;
pub mod profile;
pub mod render;
pub mod settings;

pub use config::EngineConfig;
pub use identity::*;
pub use messaging::*;
pub use profile::*;
