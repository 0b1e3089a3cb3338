//! raw stub
