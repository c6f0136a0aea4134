//! Prompt-lookup drafting: the tokens that followed the latest earlier occurrence of the
//! context's last few tokens. No model: it pays off where the output repeats the input
//! (rewriting code, quoting, structured text) and proposes nothing elsewhere.

/// A prompt-lookup drafter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptLookup {
    /// Longest suffix of the context looked for. Default 3.
    pub ngram_max: usize,
    /// Shortest suffix looked for. Default 2 (a single token repeats too often to
    /// predict much).
    pub ngram_min: usize,
}

impl Default for PromptLookup {
    fn default() -> Self {
        Self { ngram_max: 3, ngram_min: 2 }
    }
}

impl PromptLookup {
    /// Up to `max` tokens to follow `context` and then `last` (the newest token, kept
    /// apart so that no caller copies the context for each token): what followed the
    /// latest earlier occurrence of the last `n` tokens, for the largest `n` from
    /// `ngram_max` down to `ngram_min` that occurs earlier. Empty when none does.
    pub fn draft(&self, context: &[i32], last: i32, max: usize) -> Vec<i32> {
        let len = context.len() + 1;
        let at = |i: usize| context.get(i).copied().unwrap_or(last);
        if max == 0 {
            return Vec::new();
        }
        for n in (self.ngram_min.max(1)..=self.ngram_max).rev() {
            let Some(start) = len.checked_sub(n) else { continue };
            // The latest earlier occurrence that has at least one token after it, which
            // rules out the key itself.
            let found = (0..start).rev().find(|&i| (0..n).all(|j| at(i + j) == at(start + j)));
            if let Some(i) = found {
                let from = i + n;
                return (from..(from + max).min(len)).map(at).collect();
            }
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drafts after the whole of `tokens` (the last one passed apart); none after nothing.
    fn after(lookup: &PromptLookup, tokens: &[i32], max: usize) -> Vec<i32> {
        tokens.split_last().map_or_else(Vec::new, |(&last, context)| lookup.draft(context, last, max))
    }

    #[test]
    fn the_longest_matching_suffix_and_its_latest_occurrence_win() {
        let lookup = PromptLookup::default();
        // "7 8 9" occurs at 0 and at 5; the latest (5) is followed by 4 5.
        let context = [7, 8, 9, 1, 2, 7, 8, 9, 4, 5, 6, 7, 8, 9];
        assert_eq!(after(&lookup, &context, 2), vec![4, 5]);
        assert_eq!(after(&lookup, &context, 10), vec![4, 5, 6, 7, 8, 9], "stops at the context's end");
        // Only "x 3" (n = 2) matches: what followed it.
        let context = [1, 3, 9, 9, 2, 3, 5, 6, 4, 1, 3];
        assert_eq!(after(&lookup, &context, 3), vec![9, 9, 2]);
    }

    #[test]
    fn nothing_is_proposed_without_an_earlier_occurrence() {
        let lookup = PromptLookup::default();
        assert!(after(&lookup, &[1, 2, 3, 4, 5], 4).is_empty());
        assert!(after(&lookup, &[], 4).is_empty());
        assert!(after(&lookup, &[1], 4).is_empty());
        // A lone token that repeats is below the shortest n-gram.
        assert!(after(&lookup, &[5, 1, 2, 5], 4).is_empty());
        assert!(after(&lookup, &[1, 2, 1, 2], 0).is_empty());
        let single = PromptLookup { ngram_max: 1, ngram_min: 1 };
        assert_eq!(after(&single, &[5, 1, 2, 5], 4), vec![1, 2, 5]);
    }

    #[test]
    fn a_repeating_pattern_is_continued() {
        let lookup = PromptLookup::default();
        // The suffix "2 3" last occurred two tokens back: the draft runs into the suffix itself.
        assert_eq!(after(&lookup, &[1, 2, 3, 2, 3], 4), vec![2, 3]);
    }
}
