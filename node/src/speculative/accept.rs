//! Which drafted tokens stand, once the target model has seen them.
//!
//! A trip computes rows for the last accepted token and the `k` drafted ones, so the
//! target gives its choice (or distribution) at `k + 1` positions: at row `i`, the token
//! that should follow draft `i - 1`. Greedy: the drafts agree with the target's choices up
//! to the first mismatch, where the target's own token replaces the draft; if all agree,
//! the last row gives one more token. Sampling: each draft is accepted with probability
//! `min(1, p(x) / q(x))` (the target's probability over the drafter's; a drafter that
//! proposes one token for sure has `q(x) = 1`), and the first rejected one is replaced by
//! a draw from the leftover mass `max(0, p - q)`, which makes every emitted token follow
//! `p` exactly (Leviathan et al., Chen et al., 2023).

use rand::Rng;

/// What a trip yields: the drafted tokens that stand, then the target's next token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// How many of the drafted tokens stand (a prefix of them).
    pub drafted: usize,
    /// The tokens to append: that prefix of the drafts, then one token of the target's.
    pub tokens: Vec<i32>,
}

/// Errors of acceptance: the shapes do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// The target gave a number of positions other than drafts + 1.
    #[error("{got} target positions for {drafts} drafted tokens (want {})", drafts + 1)]
    Positions {
        /// Target positions given.
        got: usize,
        /// Drafted tokens.
        drafts: usize,
    },
    /// A token or distribution does not fit the vocabulary.
    #[error("{0}")]
    Vocabulary(String),
}

/// Greedy acceptance: `target[i]` is the target's choice at row `i` (after the last
/// accepted token, then after each draft).
pub fn accept_greedy(draft: &[i32], target: &[i32]) -> Result<Accepted, AcceptError> {
    if target.len() != draft.len() + 1 {
        return Err(AcceptError::Positions { got: target.len(), drafts: draft.len() });
    }
    let n = draft.iter().zip(target).take_while(|(d, t)| d == t).count();
    let mut tokens = draft[..n].to_vec();
    tokens.push(target[n]);
    Ok(Accepted { drafted: n, tokens })
}

/// Speculative sampling. `p[i]` is the target's distribution at row `i` (over the whole
/// vocabulary, summing to 1); `q`, when the drafter has one, its distribution for draft
/// `i`; without it each draft counts as certain (`q(x) = 1`, prompt lookup).
pub fn accept_sampled(
    draft: &[i32],
    p: &[Vec<f32>],
    q: Option<&[Vec<f32>]>,
    rng: &mut impl Rng,
) -> Result<Accepted, AcceptError> {
    if p.len() != draft.len() + 1 {
        return Err(AcceptError::Positions { got: p.len(), drafts: draft.len() });
    }
    if let Some(q) = q {
        if q.len() != draft.len() {
            return Err(AcceptError::Positions { got: q.len() + 1, drafts: draft.len() });
        }
    }
    let vocab = p[0].len();
    if p.iter().any(|row| row.len() != vocab) || q.is_some_and(|q| q.iter().any(|row| row.len() != vocab)) {
        return Err(AcceptError::Vocabulary("distributions of different widths".into()));
    }
    let mut tokens = Vec::with_capacity(draft.len() + 1);
    for (i, &x) in draft.iter().enumerate() {
        let xi = usize::try_from(x)
            .ok()
            .filter(|&xi| xi < vocab)
            .ok_or_else(|| AcceptError::Vocabulary(format!("draft token {x} is outside the vocabulary of {vocab}")))?;
        let (px, qx) = (f64::from(p[i][xi]), q.map_or(1.0, |q| f64::from(q[i][xi])));
        let keep = if qx <= 0.0 { px > 0.0 } else { rng.gen::<f64>() < (px / qx).min(1.0) };
        if keep {
            tokens.push(x);
            continue;
        }
        // The leftover mass max(0, p - q); a drafter without a distribution put all of
        // its mass on x.
        let leftover: Vec<f64> = (0..vocab)
            .map(|t| {
                let qt = match q {
                    Some(q) => f64::from(q[i][t]),
                    None if t == xi => 1.0,
                    None => 0.0,
                };
                (f64::from(p[i][t]) - qt).max(0.0)
            })
            .collect();
        tokens.push(draw(&leftover, rng).unwrap_or(x));
        return Ok(Accepted { drafted: i, tokens });
    }
    let last: Vec<f64> = p[draft.len()].iter().map(|&v| f64::from(v.max(0.0))).collect();
    let next = draw(&last, rng).ok_or_else(|| AcceptError::Vocabulary("an empty target distribution".into()))?;
    tokens.push(next);
    Ok(Accepted { drafted: draft.len(), tokens })
}

/// A token drawn in proportion to `weights`; None when they sum to nothing.
fn draw(weights: &[f64], rng: &mut impl Rng) -> Option<i32> {
    let total: f64 = weights.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let mut at = rng.gen::<f64>() * total;
    let mut last = None;
    for (t, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            last = Some(t as i32);
            if at < w {
                return last;
            }
            at -= w;
        }
    }
    last // rounding left `at` just past the end
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn greedy_keeps_the_agreeing_prefix_and_the_targets_next_token() {
        let all = accept_greedy(&[5, 6, 7], &[5, 6, 7, 8]).unwrap();
        assert_eq!(all, Accepted { drafted: 3, tokens: vec![5, 6, 7, 8] });
        let some = accept_greedy(&[5, 6, 7], &[5, 9, 7, 8]).unwrap();
        assert_eq!(
            some,
            Accepted { drafted: 1, tokens: vec![5, 9] },
            "a later agreement after a miss counts for nothing"
        );
        let none = accept_greedy(&[5], &[4, 1]).unwrap();
        assert_eq!(none, Accepted { drafted: 0, tokens: vec![4] });
        assert_eq!(accept_greedy(&[], &[3]).unwrap(), Accepted { drafted: 0, tokens: vec![3] });
        assert_eq!(accept_greedy(&[1, 2], &[1, 2]), Err(AcceptError::Positions { got: 2, drafts: 2 }));
    }

    /// How often each token comes first after a trip, over many seeded trials; the draft
    /// is `draft`, or drawn from `q` when given (as a draft model draws it).
    fn first_tokens(draft: i32, p: &[Vec<f32>], q: Option<&[Vec<f32>]>, trials: usize) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0f64; p[0].len()];
        for _ in 0..trials {
            let x = match q {
                Some(q) => draw(&q[0].iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), &mut rng).unwrap(),
                None => draft,
            };
            let a = accept_sampled(&[x], p, q, &mut rng).unwrap();
            counts[a.tokens[0] as usize] += 1.0;
        }
        counts.iter().map(|c| c / trials as f64).collect()
    }

    #[test]
    fn sampled_tokens_follow_the_target_distribution_whatever_the_draft() {
        let p = vec![vec![0.5, 0.3, 0.2, 0.0], vec![0.25; 4]];
        let q = [vec![0.1, 0.2, 0.6, 0.1]];
        // A certain draft of a likely token, of an unlikely one, of an impossible one, and
        // a draft model's guesses from a distribution unlike the target's.
        for (draft, q) in [(2, None), (0, None), (3, None), (-1, Some(&q[..]))] {
            let seen = first_tokens(draft, &p, q, 200_000);
            for (t, (&got, &want)) in seen.iter().zip(&p[0]).enumerate() {
                assert!((got - f64::from(want)).abs() < 0.005, "draft {draft}: token {t} at {got}, target {want}");
            }
        }
    }

    #[test]
    fn a_sure_draft_of_a_certain_token_is_always_kept_and_the_next_row_gives_one_more() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = vec![vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0]];
        for _ in 0..100 {
            let a = accept_sampled(&[1, 2], &p, None, &mut rng).unwrap();
            assert_eq!(a, Accepted { drafted: 2, tokens: vec![1, 2, 0] });
        }
        // A draft the target never picks is never kept.
        let a = accept_sampled(&[0, 2], &p, None, &mut rng).unwrap();
        assert_eq!(a, Accepted { drafted: 0, tokens: vec![1] });
    }

    #[test]
    fn shapes_and_tokens_that_do_not_fit_are_refused() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = vec![vec![0.5, 0.5], vec![0.5, 0.5]];
        assert!(matches!(accept_sampled(&[0, 1], &p, None, &mut rng), Err(AcceptError::Positions { .. })));
        assert!(matches!(accept_sampled(&[7], &p, None, &mut rng), Err(AcceptError::Vocabulary(_))));
        assert!(matches!(accept_sampled(&[-1], &p, None, &mut rng), Err(AcceptError::Vocabulary(_))));
        let ragged = vec![vec![0.5, 0.5], vec![1.0]];
        assert!(matches!(accept_sampled(&[0], &ragged, None, &mut rng), Err(AcceptError::Vocabulary(_))));
        let empty = vec![vec![0.0, 0.0]];
        assert!(matches!(accept_sampled(&[], &empty, None, &mut rng), Err(AcceptError::Vocabulary(_))));
    }
}
