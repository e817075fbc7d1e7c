//! REST API (placeholder while the store compiles).
