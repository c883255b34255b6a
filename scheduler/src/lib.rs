//! DockLock's scheduler: where agreements run and which nodes are alive.
//!
//! Owns: the consistent-hash ring with virtual nodes ([`ring`]), the
//! placement walk over it with constraints, zone spread and an explanation
//! ([`placement`]), and the heartbeat bookkeeping that turns silence into a
//! `down` decision ([`liveness`]).
//!
//! Must not: do IO, read a clock or draw randomness. Every function here is
//! a pure function of its arguments, so the registry can run the placement
//! inside `apply` (every node computes the same answer) and any node can
//! recompute and explain a committed decision. Liveness takes the time as an
//! argument; the node's leader loop supplies it.

pub mod liveness;
pub mod placement;
pub mod ring;

pub use placement::{place, Candidate, Decision, Placement, Request, Skip, Step};
pub use ring::Ring;
