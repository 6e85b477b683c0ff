//! Maintenance over months: the clock everything ages by, what each peer
//! usually does, and the pure decisions (when a holder is gone, when an
//! object is repaired, which fragments leave a placement) that the
//! daemon's repair pass and the churn simulator share.

pub mod audit;
pub mod clock;
pub mod health;
pub mod history;
pub mod markov;
pub mod policy;

pub use clock::{Clock, SimClock, SystemClock};
pub use history::{GoneWindow, Uptime};
pub use policy::{Holder, Plan, Policy, Tally};
