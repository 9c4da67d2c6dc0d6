//! The fuzz targets' properties (see `properties.rs`).
pub mod properties;
