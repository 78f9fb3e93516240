//! Mutations of an input: the byte-level ones a fuzzer without coverage
//! feedback relies on (bit flips, boundary values in integers of every
//! width, insertions, deletions, repeats, splices from other seeds), plus
//! tokens from a dictionary of what the target's syntax gives meaning to.

use rand::Rng;
use rand::rngs::SmallRng;

/// Integers at the edges where lengths and counts go wrong.
const BOUNDARIES: [u64; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// `input` changed by one to four stacked mutations; `others` lend pieces
/// for splices and `tokens` words of the target's syntax.
pub fn mutate(rng: &mut SmallRng, input: &[u8], others: &[Vec<u8>], tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        step(rng, &mut out, others, tokens);
        // Inputs stay bounded: a parser's speed on huge input is not what
        // this looks for (the APIs cap sizes before parsing).
        out.truncate(1 << 20);
    }
    out
}

fn step(rng: &mut SmallRng, out: &mut Vec<u8>, others: &[Vec<u8>], tokens: &[&[u8]]) {
    let at = |rng: &mut SmallRng, len: usize| rng.random_range(0..=len);
    match rng.random_range(0..9) {
        0 if !out.is_empty() => {
            let i = rng.random_range(0..out.len());
            out[i] ^= 1 << rng.random_range(0..8);
        }
        1 if !out.is_empty() => {
            // A boundary value written over the bytes at a random place, in
            // either byte order and any width.
            let width = [1, 2, 4, 8][rng.random_range(0..4)];
            let value = BOUNDARIES[rng.random_range(0..BOUNDARIES.len())];
            let bytes = if rng.random() {
                value.to_le_bytes()
            } else {
                value.to_be_bytes()
            };
            let i = rng.random_range(0..out.len());
            for (k, b) in bytes.iter().take(width).enumerate() {
                if let Some(slot) = out.get_mut(i + k) {
                    *slot = *b;
                }
            }
        }
        2 => {
            let i = at(rng, out.len());
            let n = rng.random_range(1..=8);
            let fresh: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            out.splice(i..i, fresh);
        }
        3 if !out.is_empty() => {
            let i = rng.random_range(0..out.len());
            let n = rng.random_range(1..=(out.len() - i).min(64));
            out.drain(i..i + n);
        }
        4 if !out.is_empty() => {
            // A run repeated: nesting, repeated fields, long lines.
            let i = rng.random_range(0..out.len());
            let n = rng.random_range(1..=(out.len() - i).min(64));
            let run = out[i..i + n].repeat(rng.random_range(1..=16));
            let j = at(rng, out.len());
            out.splice(j..j, run);
        }
        5 if !others.is_empty() => {
            let other = &others[rng.random_range(0..others.len())];
            if !other.is_empty() {
                let i = rng.random_range(0..other.len());
                let n = rng.random_range(1..=(other.len() - i).min(256));
                let j = at(rng, out.len());
                out.splice(j..j, other[i..i + n].iter().copied());
            }
        }
        6 => out.truncate(at(rng, out.len())),
        _ if !tokens.is_empty() => {
            let token = tokens[rng.random_range(0..tokens.len())];
            let i = at(rng, out.len());
            if rng.random() || out.len() < token.len() {
                out.splice(i..i, token.iter().copied());
            } else {
                let i = i.min(out.len() - token.len());
                out[i..i + token.len()].copy_from_slice(token);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mutations_change_inputs_and_stay_bounded() {
        let mut rng = SmallRng::seed_from_u64(7);
        let seed = b"apiVersion: wasmtwin.dev/v1alpha1".to_vec();
        let mut changed = 0;
        for _ in 0..10_000 {
            let out = mutate(&mut rng, &seed, std::slice::from_ref(&seed), &[b"{"]);
            assert!(out.len() <= 1 << 20);
            changed += usize::from(out != seed);
        }
        assert!(changed > 9_000, "only {changed} of 10,000 inputs changed");
    }
}
