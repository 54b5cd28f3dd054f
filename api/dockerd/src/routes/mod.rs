//! The Docker Engine API's endpoints, by area. Each area parses its own paths (image names
//! contain slashes) and answers Docker's JSON shapes.

mod body;
pub mod containers;
pub mod df;
pub mod events;
pub mod exec;
mod hijack;
pub mod images;
pub mod networks;
pub mod stats;
pub mod system;
pub mod volumes;
