//! zero detect stub
