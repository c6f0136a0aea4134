//! Speculative decoding: several tokens per trip around a route, with the output the
//! route would give without it.
//!
//! Across a real network a token through K hops costs its compute plus K link delays.
//! Speculation spends one trip on several positions: a cheap drafter guesses the next
//! tokens, the route computes the last accepted token and the guesses as one step, and
//! the last hop samples every position and keeps the longest prefix that agrees with
//! what it would have chosen, plus its own token at the first disagreement.
//!
//! Data flow of one trip: [`lookup::PromptLookup`] (or a draft model) proposes up to
//! [`length::DraftLength::choose`] tokens after the context; the step carries the last
//! accepted token and the draft; the last hop's sampler gives the target's choice (or
//! distribution) at each row; [`accept`] decides how many drafted tokens stand and which
//! token follows them; every hop then drops the rows past the accepted ones; the trip's
//! time and the number accepted go back into [`length::DraftLength::record`].
//!
//! Greedy decoding keeps exactly the tokens it would have chosen one at a time; with
//! sampling, [`accept::accept_sampled`] is standard speculative sampling, so the
//! accepted tokens follow the target model's distribution.

pub mod accept;
pub mod length;
pub mod lookup;
