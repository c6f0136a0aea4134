//! Seeded mutations of byte strings.
//!
//! The runner takes an input from its pool (the corpus, the seeds, and the inputs that
//! produced an outcome not seen before) and applies one to four of these edits. Several
//! aim at length fields, which is where decoders go wrong: little-endian integers and
//! varints of boundary sizes written over the input, and cuts at any point.

use rand::rngs::StdRng;
use rand::Rng;

/// Lengths that sit on boundaries decoders check.
const INTERESTING: [u64; 14] = [0, 1, 2, 7, 8, 16, 31, 32, 127, 128, 255, 256, 65_535, 65_536];

/// Largest input a mutation makes: bigger inputs find no more and make each run slower.
pub const MAX_INPUT: usize = 64 << 10;

/// Mutates `input` in place (with `other`, another input of the pool, for splices).
pub fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..rng.gen_range(1..=4) {
        edit(rng, input, other);
    }
    input.truncate(MAX_INPUT);
}

fn edit(rng: &mut StdRng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    let at = |rng: &mut StdRng| if len == 0 { 0 } else { rng.gen_range(0..len) };
    match rng.gen_range(0..11) {
        0 if len > 0 => {
            let i = at(rng);
            input[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if len > 0 => {
            let i = at(rng);
            input[i] = rng.gen();
        }
        2 if len > 0 => {
            let i = at(rng);
            input[i] = [0u8, 1, 0x7f, 0x80, 0xff][rng.gen_range(0..5)];
        }
        3 => {
            let i = if len == 0 { 0 } else { rng.gen_range(0..=len) };
            let n = rng.gen_range(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            input.splice(i..i, bytes);
        }
        4 if len > 0 => {
            let i = at(rng);
            let n = rng.gen_range(1..=(len - i).min(64));
            input.drain(i..i + n);
        }
        5 if len > 0 => {
            // Repeat a stretch: repeated fields and arrays grow.
            let i = at(rng);
            let n = rng.gen_range(1..=(len - i).min(256));
            let copy = input[i..i + n].to_vec();
            input.splice(i..i, copy);
        }
        6 if len > 0 => input.truncate(at(rng)),
        7 if !other.is_empty() => {
            // Splice: our front, the other's back.
            let i = if len == 0 { 0 } else { rng.gen_range(0..=len) };
            let j = rng.gen_range(0..other.len());
            input.truncate(i);
            input.extend_from_slice(&other[j..]);
        }
        8 if len > 0 => {
            let i = at(rng);
            let value = pick_length(rng);
            let width = [1usize, 2, 4, 8][rng.gen_range(0..4)];
            let bytes = value.to_le_bytes();
            for (k, b) in bytes[..width].iter().enumerate() {
                if let Some(slot) = input.get_mut(i + k) {
                    *slot = *b;
                }
            }
        }
        9 if len > 0 => {
            // A varint, as protobuf and our frames write lengths.
            let i = at(rng);
            let varint = to_varint(pick_length(rng));
            let end = (i + rng.gen_range(0..=varint.len())).min(len);
            input.splice(i..end, varint);
        }
        _ => {
            let i = if len == 0 { 0 } else { rng.gen_range(0..=len) };
            input.insert(i, rng.gen());
        }
    }
}

fn pick_length(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..4) {
        0 => rng.gen(),
        1 => u64::MAX - rng.gen_range(0..4),
        2 => 1 << rng.gen_range(0..63),
        _ => {
            let base = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            base.wrapping_add(rng.gen_range(0..3)).wrapping_sub(1)
        }
    }
}

/// `value` as an unsigned LEB128 varint.
pub fn to_varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_same_seed_makes_the_same_mutations() {
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut input = b"a seed input of some length".to_vec();
            for _ in 0..100 {
                mutate(&mut rng, &mut input, b"another");
            }
            input
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn varints_are_leb128() {
        assert_eq!(to_varint(0), [0]);
        assert_eq!(to_varint(300), [0xac, 0x02]);
        assert_eq!(to_varint(u64::MAX).len(), 10);
    }
}
