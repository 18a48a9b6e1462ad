//! `Decisions.Decide` request validation, on any protobuf bytes a client can send.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = nudge_proto::v1::DecideRequest::decode(data) {
        let _ = nudge_inference::validate_decide_request(req, 256);
    }
});
