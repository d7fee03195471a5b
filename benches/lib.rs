//! Benchmark package: the benches live in the `[[bench]]` targets.
