//! Resolver throughput: 1,000 rules of mixed kinds (exact, exact with port, patterns, `*`),
//! resolved against a rotating set of references that hit every kind. The issue's floor is
//! 1,000,000 resolutions/s on one core: criterion reports time per resolution (<= 1 µs).
//!
//! `cargo bench --bench resolve`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use regmirror::config::{ConfigSource, MirrorConfig};
use regmirror::reference::ImageRef;
use regmirror::resolve::Resolver;

fn thousand_rules() -> Resolver {
    let mut rules = Vec::new();
    for i in 0..500 {
        rules.push(format!(
            r#"{{"domain": "reg{i}.example.com", "mirrors": ["https://m{i}.cache", "http://backup.cache:5000"]}}"#
        ));
    }
    for i in 0..250 {
        rules.push(format!(
            r#"{{"domain": "reg{i}.example.com:5000", "mirrors": ["https://p{i}.cache"]}}"#
        ));
    }
    for i in 0..249 {
        rules.push(format!(
            r#"{{"domain": "*.team{i}.example.org", "mirrors": ["https://t{i}.cache"]}}"#
        ));
    }
    rules.push(r#"{"domain": "*", "mirrors": ["https://any.cache"]}"#.to_owned());
    let text = format!(
        r#"{{"mirror-registries": [{}], "registry-mirrors": ["https://hub.cache"],
            "insecure-registries": ["backup.cache:5000", "10.0.0.0/8"]}}"#,
        rules.join(",")
    );
    let config = MirrorConfig::from_sources(&[ConfigSource {
        path: "bench.json",
        text: &text,
    }])
    .unwrap();
    Resolver::new(config).unwrap()
}

fn bench(c: &mut Criterion) {
    let resolver = thousand_rules();
    let images: Vec<ImageRef> = [
        "reg42.example.com/team/app:v1",
        "reg7.example.com:5000/x/y",
        "build.team99.example.org/ci/runner:3",
        "nginx",
        "quay.io/prometheus/node-exporter:v1.8.0",
        "10.1.2.3:5000/internal/app",
        "a.b.team200.example.org/x",
        "ghcr.io/org/image@sha256:7173b809ca12ec5dee4506cd86be934c4596dd234ee82c0662eac04a8c2c71dc",
    ]
    .iter()
    .map(|s| ImageRef::parse(s).unwrap())
    .collect();
    let mut group = c.benchmark_group("resolve");
    group.throughput(Throughput::Elements(images.len() as u64));
    group.bench_function("1000 rules, 8 mixed references", |b| {
        b.iter(|| {
            for image in &images {
                black_box(resolver.resolve(black_box(image)));
            }
        })
    });
    group.finish();
    c.bench_function("parse reference", |b| {
        b.iter(|| ImageRef::parse(black_box("reg.test1.com:5000/library/nginx:1.25")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
