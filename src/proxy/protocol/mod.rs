//! PostgreSQL v3 protocol, without IO: framing (`codec`), the messages
//! pgcat builds or inspects (`messages`), the request/reply pairing of a
//! session (`tracker`), statement identity and records (`statements`),
//! what a transaction did to session state (`effects`), and session
//! settings as data (`settings`).

pub mod codec;
pub mod effects;
pub mod messages;
pub mod settings;
pub mod statements;
pub mod tracker;

pub use codec::{Header, Message, MessageCodec};
