//! The ADS server (being written).
