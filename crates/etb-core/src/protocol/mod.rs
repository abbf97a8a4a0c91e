//! The agent's protocol (docs/protocol.md), from the worker's side:
//! - [`rank`]: the agent rank from the environment (section 1);
//! - [`naming`]: the agent's two file paths (section 1);
//! - [`state_db`]: the state LMDB: heartbeat, pair and batch keys and their encodings (section 2);
//! - [`command_queue`]: the command queue LMDB and its semaphores (section 3);
//! - [`commands`]: the MessagePack command messages (section 4);
//! - [`completion`]: completion semaphores (section 5);
//! - [`payload_check`]: what a payload must look like before it is enqueued (the agent unpickles it).

pub mod command_queue;
pub mod commands;
pub mod completion;
pub mod naming;
pub mod payload_check;
pub mod rank;
pub mod state_db;
