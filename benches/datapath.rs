//! Seal/open throughput of the data path against the raw AES-256-PMAC-SIV
//! primitive (the seal stage must stay within 10% of it), and object-id hashing.

use aes_siv::aead::KeyInit;
use aes_siv::siv::Aes256PmacSiv;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use drizzle::crypto::{ObjectId, VaultKeys};

fn seal(c: &mut Criterion) {
    let keys = VaultKeys::from_master(&[1u8; 32]);
    let mut g = c.benchmark_group("seal");
    for size in [64 << 10, 1 << 20, 4 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("raw_pmac_siv", size), &data, |b, d| {
            let mut buf = d.clone();
            b.iter(|| {
                let mut siv = Aes256PmacSiv::new_from_slice(&[2u8; 64]).unwrap();
                siv.encrypt_inout_detached([b"h"], (&mut buf[..]).into())
                    .unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("seal_object", size), &data, |b, d| {
            b.iter(|| keys.seal_object(d))
        });
        g.bench_with_input(BenchmarkId::new("seal_object+id", size), &data, |b, d| {
            b.iter(|| ObjectId::of(&keys.seal_object(d)))
        });
        let sealed = keys.seal_object(&data);
        g.bench_with_input(
            BenchmarkId::new("verify+open_object", size),
            &sealed,
            |b, s| {
                b.iter_batched(
                    || s.clone(),
                    |s| {
                        assert!(ObjectId::of(&s) != ObjectId([0; 32]));
                        keys.open_object(s).unwrap()
                    },
                    criterion::BatchSize::LargeInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
