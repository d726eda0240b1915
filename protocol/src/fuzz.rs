//! The bodies of the fuzz targets in `fuzz/` and of the test that replays their corpora, so
//! that the two never drift apart. Each takes arbitrary bytes and must neither panic nor hold
//! more than its bound, whatever they are.

use crate::frame::{Decoded, FrameDecoder, HEADER_BYTES};
use crate::message::Role;
use crate::session::{Grant, ServerEvent, ServerLimits, ServerSession};

/// The frame decoder's limit in these targets: small, so large announcements are common.
const FRAME_BYTES_MAX: u32 = 64 << 10;

/// Bytes pushed into a decoder in chunks whose sizes the input picks (its first byte), every
/// frame decoded out: never a panic, never more buffered than one frame plus one chunk.
pub fn frame_decoder(data: &[u8]) {
    let Some((&chunk_pick, bytes)) = data.split_first() else { return };
    let chunk_bytes = usize::from(chunk_pick).max(1);
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX);
    for chunk in bytes.chunks(chunk_bytes) {
        decoder.push(chunk);
        loop {
            match decoder.decode() {
                Ok(Decoded::Frame(_)) => {}
                Ok(Decoded::NeedMore { .. }) => break,
                Err(err) if err.is_fatal() => return,
                Err(_) => {}
            }
        }
        let bound = HEADER_BYTES + FRAME_BYTES_MAX as usize + chunk_bytes;
        assert!(decoder.buffered_bytes() <= bound, "{} buffered", decoder.buffered_bytes());
    }
}

/// A connection's life driven by the input: each step is one byte saying what happens (some
/// bytes arriving on a stream, the clock moving, a stream ending) followed by what it needs; a
/// Hello is answered with the credentials the next byte picks. The rules must never panic,
/// and must keep their promises: the frame limit is a Hello's until authenticated, and nothing
/// but a Hello gets through before that.
pub fn server_session(data: &[u8]) {
    let limits =
        ServerLimits { frame_bytes_max: FRAME_BYTES_MAX, in_flight_max: 8, hello_timeout_ms: 100 };
    let mut session = ServerSession::new(limits, 0);
    let mut decoder = FrameDecoder::new(session.frame_bytes_max());
    let (mut now_ms, mut input) = (0u64, data);
    while let Some((&step, rest)) = input.split_first() {
        input = rest;
        let stream = u64::from(step >> 2 & 3) * 4;
        match step % 4 {
            0 => {
                // The next (step >> 4) x 16 bytes (at least one) arrive on the stream.
                let take = input.len().min((usize::from(step >> 4) * 16).max(1));
                let (bytes, rest) = input.split_at(take);
                input = rest;
                decoder.set_frame_bytes_max(session.frame_bytes_max());
                decoder.push(bytes);
                while let Ok(Decoded::Frame(frame)) = decoder.decode() {
                    let authenticated = session.grant().is_some();
                    match session.handle_frame(stream, frame) {
                        Ok(ServerEvent::Hello { .. }) => {
                            let (&pick, rest) = input.split_first().unwrap_or((&0, &[]));
                            input = rest;
                            if session.authenticated(grant_for(pick)).is_err() {
                                return;
                            }
                        }
                        Ok(_) => assert!(authenticated, "only a Hello before Welcome"),
                        Err(_) => return,
                    }
                }
            }
            1 => {
                now_ms += u64::from(step >> 2) * 10;
                if session.handle_timeout(now_ms).is_err() {
                    assert!(session.grant().is_none(), "no deadline once authenticated");
                    return;
                }
            }
            2 => session.stream_ended(stream),
            _ => {}
        }
        if session.grant().is_none() {
            assert_eq!(session.frame_bytes_max(), crate::frame::HELLO_BYTES_MAX);
        }
    }
}

/// The credentials a Hello turns out to carry: none, or a service, admin or consumer grant.
fn grant_for(pick: u8) -> Option<Grant> {
    let role = match pick % 4 {
        0 => return None,
        1 => Role::Service,
        2 => Role::Admin,
        _ => Role::Consumer,
    };
    Some(Grant { role, consumers: None })
}
