//! shoal-bench's library: what the benchmarks (`benches/`), their tests and the `shoal-bench`
//! binary share, kept out of the product crates.
//!
//! * [`loadgen`]: many simulated Envoys against an ADS server (an agent's, or one in process).

pub mod loadgen;
