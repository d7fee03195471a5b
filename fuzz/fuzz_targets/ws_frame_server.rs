//! Arbitrary bytes received by a server-side `Connection`, whole and in arbitrary chunks: see
//! `ws_frame.rs`, shared with the other role.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rallymq_websocket::Role;

#[path = "ws_frame.rs"]
mod ws_frame;

fuzz_target!(|data: &[u8]| ws_frame::check(Role::Server, data));
