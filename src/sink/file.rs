//! file sink stub
