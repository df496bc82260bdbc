//! Health checks of registered instances (being written).
