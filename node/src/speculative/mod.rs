//! Speculative decoding: several tokens per trip around a route, with the output the
//! route would give without it.
//!
//! Across a real network a token through K hops costs its compute plus K link delays.
//! Speculation spends one trip on several positions: a cheap drafter guesses the next
//! tokens, the route computes the last accepted token and the guesses as one step, and
//! the last hop samples every position and keeps the longest prefix that agrees with
//! what it would have chosen, plus its own token at the first disagreement.
//!
//! Data flow of one trip: a [`drafter::Drafter`] (the client's in client-sampled mode,
//! the last hop's in ring mode) has its proposer, [`lookup::PromptLookup`] or a
//! [`model::DraftModel`]'s session, propose up to [`length::DraftLength::choose`] tokens
//! after the context; the step carries the last accepted token and the drafts; the
//! route's sampler draws at each row in turn (the last hop in ring mode, the client from
//! each row's top logits in client-sampled mode), and each draft stands while the draw
//! agrees with it; the first draw that does not is the trip's next token. Every hop then
//! drops the rows past the drafts that stood; the trip's time and the number that stood
//! go back into [`length::DraftLength::record`].
//!
//! A draft is a token for sure, and keeping it exactly when an ordinary draw picks it
//! is speculative sampling with a certain draft (Leviathan et al., Chen et al., 2023):
//! every token is the draw the sampler would have made without drafts, one draw per
//! token, so greedy and seeded sampling give the tokens they give without speculation.

pub mod drafter;
pub mod length;
pub mod lookup;
pub mod model;

pub use drafter::{DraftSource, Drafter, Proposer};
pub use lookup::PromptLookup;
pub use model::{DraftModel, DraftSession};
