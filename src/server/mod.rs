//! Everything that accepts connections: the Unix socket for local tools.

pub mod unix;
