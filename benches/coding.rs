//! RaptorQ coding throughput: encoding a sealed object into n fragments and
//! decoding it from k, from the source fragments (the fast, systematic path
//! reads ask for first) and from a mix with repair fragments.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use drizzle::coder::{encode, Decoder, Layout};

const K: u32 = 10;
const N: u32 = 16;

fn coding(c: &mut Criterion) {
    let mut g = c.benchmark_group("coding");
    g.sample_size(20);
    for size in [1 << 20, 4 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 131 % 251) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encode_10_of_16", size), &data, |b, d| {
            b.iter(|| encode(d, K, 0..N).unwrap())
        });
        let frags = encode(&data, K, 0..N).unwrap();
        let layout = Layout::new(size, K).unwrap();
        let decode = |pick: &[usize]| {
            let mut d = Decoder::new(layout);
            for &i in pick {
                d.add(&frags[i].bytes).unwrap();
            }
            d.decode().unwrap()
        };
        let source: Vec<usize> = (0..K as usize).collect();
        g.bench_function(BenchmarkId::new("decode_source", size), |b| {
            b.iter(|| decode(&source))
        });
        // Three source fragments lost, three repair fragments instead.
        let mixed: Vec<usize> = (3..K as usize + 3).collect();
        g.bench_function(BenchmarkId::new("decode_mixed_3_repair", size), |b| {
            b.iter(|| decode(&mixed))
        });
        let repair_only: Vec<usize> = (N as usize - K as usize..N as usize).collect();
        g.bench_function(BenchmarkId::new("decode_6_source_4_repair", size), |b| {
            b.iter(|| decode(&repair_only))
        });
    }
    g.finish();
}

criterion_group!(benches, coding);
criterion_main!(benches);
