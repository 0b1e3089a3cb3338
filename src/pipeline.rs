//! pipeline stub
