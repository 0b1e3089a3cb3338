//! The CDI importer contract (`cdi-importer-contract.md`): the environment the
//! controller sets, the sizes it implies, and the termination message it reads.
//! Pure functions over an environment map and paths, so they are tested
//! without a cluster; the `import` entrypoint builds on them.

pub mod archive;
pub mod env;
pub mod import;
pub mod labels;
pub mod node_pull;
pub mod quantity;
pub mod sizing;
pub mod termination;
