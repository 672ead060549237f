//! Chorus domain types shared by every crate: ids, identities, events, shard commands,
//! limits and the versioned on-disk/wire envelope. No I/O, no tokio, no clock.

pub mod command;
pub mod encoding;
pub mod event;
pub mod identity;
pub mod ids;
pub mod json;
pub mod messaging;
pub mod routing;
pub mod seeded;
pub mod time;

pub use command::*;
pub use event::*;
pub use identity::*;
pub use ids::*;
pub use json::JsonMap;
pub use messaging::*;
