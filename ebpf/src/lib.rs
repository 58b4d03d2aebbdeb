//! Exists so the userspace crate can name this package as a build dependency
//! (cargo then rebuilds the kernel programs when they change).
#![no_std]
