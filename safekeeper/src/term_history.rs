//! Term histories live in `walproto`, shared with the walproposer so that both sides of the
//! protocol apply the same rules.

pub use walproto::term_history::{TermHistory, TermHistoryError, TermSwitch};
