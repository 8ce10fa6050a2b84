//! The close codes this protocol uses (RFC 6455 section 7.4 and the 4000–4999 private range).

/// The client or server is done.
pub const NORMAL: u16 = 1000;
/// The server is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// The peer broke RFC 6455 (an unmasked client frame, a bad opcode, reserved bits…).
pub const PROTOCOL_ERROR: u16 = 1002;
/// A message's data was not what its frame says: a text message not valid UTF-8, or a
/// compressed message (permessage-deflate) that does not inflate.
pub const INVALID_UTF8: u16 = 1007;
/// The peer kept sending requests that cannot be read (more than `max_bad_frames` in a row).
pub const POLICY: u16 = 1008;
/// A frame or message was larger than `max_message_size`.
pub const TOO_BIG: u16 = 1009;
/// The server failed in a way the peer did not cause.
pub const INTERNAL_ERROR: u16 = 1011;
/// The peer sent nothing, not even a pong, for longer than the idle timeout.
pub const IDLE_TIMEOUT: u16 = 4000;
/// The peer did not read for longer than the write timeout while frames waited for it.
pub const SLOW_CONSUMER: u16 = 4001;
/// The token the socket was opened with has expired (or was revoked); the client reconnects
/// with a new one and resubscribes from its cursors.
pub const TOKEN_EXPIRED: u16 = 4401;
