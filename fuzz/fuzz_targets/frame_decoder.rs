//! Feeds arbitrary bytes, in arbitrary chunks, to the frame decoder and decodes every body as
//! each envelope type. Property: no input panics, allocates beyond the limit, or loops.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use strata_proto::FrameDecoder;
use strata_proto::frame::decode_body;
use strata_proto::pb::{bookie, client, common, metastore};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let decoder = FrameDecoder::new(64 * 1024);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(body)) => {
                    let _ = decode_body::<client::ClientFrame>(body.clone());
                    let _ = decode_body::<client::ServerFrame>(body.clone());
                    let _ = decode_body::<client::StoredBatch>(body.clone());
                    let _ = decode_body::<common::Hello>(body.clone());
                    let _ = decode_body::<bookie::BookieRequest>(body.clone());
                    let _ = decode_body::<metastore::MetaRequest>(body);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish(&buf);
});
