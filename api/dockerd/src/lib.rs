//! The parts of berthd that parse what clients send before any route sees it, as a library
//! so that the fuzz targets (fuzz/) reach them as berthd runs them.

pub mod detach;
pub mod query;
