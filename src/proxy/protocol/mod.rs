//! PostgreSQL v3 protocol, without IO: framing (`codec`), the messages
//! pgcat builds or inspects (`messages`), and the request/reply pairing of
//! a session (`tracker`).

pub mod codec;
pub mod messages;
pub mod tracker;

pub use codec::{Header, Message, MessageCodec};
