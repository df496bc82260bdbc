//! Model → Envoy resources (being written).
