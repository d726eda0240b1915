//! The wire codec: encoding a batch of reserve requests into a frame, and decoding it back
//! (header checks, aligned copy, bytecheck validation, deserialisation), per request.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flashstock_bench::commands;
use flashstock_protocol::{
    Decoded, FrameDecoder, FrameEncoder, Message, Request, FRAME_BYTES_MAX_DEFAULT,
};

fn batch(requests: u64) -> Message {
    Message::Requests(
        (0..requests).map(|n| Request::Apply(commands::reserve(n, 7, 60_000))).collect(),
    )
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for requests in [1u64, 16, 64] {
        let message = batch(requests);
        group.throughput(Throughput::Elements(requests));
        let mut encoder = FrameEncoder::new(FRAME_BYTES_MAX_DEFAULT);
        let mut out = Vec::new();
        group.bench_with_input(BenchmarkId::new("encode", requests), &message, |b, message| {
            b.iter(|| {
                out.clear();
                encoder.encode(1, message, &mut out).unwrap();
                black_box(out.len())
            })
        });
        let mut frame = Vec::new();
        encoder.encode(1, &message, &mut frame).unwrap();
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
        group.bench_with_input(BenchmarkId::new("decode", requests), &frame, |b, frame| {
            b.iter(|| {
                decoder.push(frame);
                match decoder.decode().unwrap() {
                    Decoded::Frame(frame) => black_box(frame.correlation),
                    Decoded::NeedMore { .. } => unreachable!("a whole frame was pushed"),
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
