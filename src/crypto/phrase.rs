//! The recovery phrase: the user's 32-byte master seed as 25 words from the BIP-39 English
//! word list (2048 words, 11 bits each; every word is fixed by its first four letters).
//!
//! Layout (docs/design.md, "Recovery phrase"):
//!
//! ```text
//!   words 1–24: 264 bits = seed (256 bits) ‖ first byte of BLAKE3("peerpost phrase v1" ‖ seed)
//!   word 25:    c = Σ_{i=1..24} α^i · w_i  in GF(2^11) (modulus x^11 + x^2 + 1, α = x)
//! ```
//!
//! The GF(2^11) check word makes detection *certain*, not probable, for the typos people make:
//! any single changed word changes `c` by α^i·δ ≠ 0, and swapping two neighbouring words
//! changes it by α^i·(1+α)·δ ≠ 0. The 8-bit hash catches most other damage on top.

use thiserror::Error;

const WORDLIST: &str = include_str!("wordlist-english.txt");
pub const WORDS: usize = 25;
const DATA_WORDS: usize = 24;
const GF_MODULUS: u16 = 0b1000_0000_0101; // x^11 + x^2 + 1

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PhraseError {
    #[error("a recovery phrase has 25 words, this one has {0}")]
    WrongLength(usize),
    #[error("word {position} ({word:?}) is not in the word list: check its spelling")]
    UnknownWord { position: usize, word: String },
    #[error(
        "the phrase's checksum does not match: a word is mistyped or two words are swapped; \
         compare it word by word with the written copy"
    )]
    Checksum,
}

fn wordlist() -> Vec<&'static str> {
    WORDLIST.lines().collect()
}

fn gf_mul(mut a: u16, mut b: u16) -> u16 {
    let mut out = 0u16;
    while b != 0 {
        if b & 1 != 0 {
            out ^= a;
        }
        b >>= 1;
        a <<= 1;
        if a & 0x800 != 0 {
            a ^= GF_MODULUS;
        }
    }
    out
}

fn check_word(data: &[u16]) -> u16 {
    // Horner's rule from the last word: c = α·(w_1 + α·(w_2 + …)).
    data.iter().rev().fold(0u16, |acc, &w| gf_mul(acc ^ w, 2))
}

fn hash_byte(seed: &[u8; 32]) -> u8 {
    super::derive("peerpost 2026 phrase checksum v1", seed)[0]
}

/// Encodes a seed as 25 space-separated words.
pub fn encode(seed: &[u8; 32]) -> String {
    let list = wordlist();
    let mut bits = seed.to_vec();
    bits.push(hash_byte(seed));
    let mut data = Vec::with_capacity(WORDS);
    for i in 0..DATA_WORDS {
        let mut v = 0u16;
        for b in 0..11 {
            let bit = i * 11 + b;
            let set = bits[bit / 8] >> (7 - bit % 8) & 1;
            v = v << 1 | u16::from(set);
        }
        data.push(v);
    }
    let c = check_word(&data);
    data.push(c);
    data.iter()
        .map(|&w| list[usize::from(w)])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decodes a phrase typed by a person: case, extra spaces, line breaks and numbering ("1.")
/// are ignored; a word may be given by its first four letters.
pub fn decode(phrase: &str) -> Result<[u8; 32], PhraseError> {
    let list = wordlist();
    let words: Vec<&str> = phrase
        .split_whitespace()
        .filter(|w| {
            !w.trim_end_matches(['.', ')', ':'])
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .collect();
    if words.len() != WORDS {
        return Err(PhraseError::WrongLength(words.len()));
    }
    let mut values = Vec::with_capacity(WORDS);
    for (i, w) in words.iter().enumerate() {
        let w = w.to_lowercase();
        let found = list.iter().position(|&x| x == w).or_else(|| {
            let prefix: String = w.chars().take(4).collect();
            if w.chars().count() < 4 {
                return None;
            }
            let mut hits = list
                .iter()
                .enumerate()
                .filter(|(_, x)| x.starts_with(&prefix));
            let first = hits.next()?;
            (hits.next().is_none() && first.1.starts_with(w.as_str())).then_some(first.0)
        });
        match found {
            Some(v) => values.push(u16::try_from(v).unwrap_or(0)),
            None => {
                return Err(PhraseError::UnknownWord {
                    position: i + 1,
                    word: w,
                });
            }
        }
    }
    if check_word(&values[..DATA_WORDS]) != values[DATA_WORDS] {
        return Err(PhraseError::Checksum);
    }
    let mut bits = [0u8; 33];
    for (i, &v) in values[..DATA_WORDS].iter().enumerate() {
        for b in 0..11 {
            if v >> (10 - b) & 1 == 1 {
                let bit = i * 11 + b;
                bits[bit / 8] |= 1 << (7 - bit % 8);
            }
        }
    }
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&bits[..32]);
    if hash_byte(&seed) != bits[32] {
        return Err(PhraseError::Checksum);
    }
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wordlist_is_bip39_english() {
        let list = wordlist();
        assert_eq!(list.len(), 2048);
        assert_eq!(list[0], "abandon");
        assert_eq!(list[2047], "zoo");
    }

    proptest! {
        #[test]
        fn roundtrip(seed in any::<[u8; 32]>()) {
            let p = encode(&seed);
            prop_assert_eq!(p.split(' ').count(), WORDS);
            prop_assert_eq!(decode(&p).unwrap(), seed);
            prop_assert_eq!(decode(&p.to_uppercase()).unwrap(), seed);
        }

        #[test]
        fn any_single_word_change_is_detected(seed in any::<[u8; 32]>(), pos in 0usize..WORDS, new in 0usize..2048) {
            let p = encode(&seed);
            let mut words: Vec<&str> = p.split(' ').collect();
            let list = wordlist();
            prop_assume!(words[pos] != list[new]);
            words[pos] = list[new];
            prop_assert_eq!(decode(&words.join(" ")), Err(PhraseError::Checksum));
        }

        #[test]
        fn any_neighbour_swap_is_detected(seed in any::<[u8; 32]>(), pos in 0usize..WORDS - 1) {
            let p = encode(&seed);
            let mut words: Vec<&str> = p.split(' ').collect();
            prop_assume!(words[pos] != words[pos + 1]);
            words.swap(pos, pos + 1);
            prop_assert_eq!(decode(&words.join(" ")), Err(PhraseError::Checksum));
        }

        #[test]
        fn decoder_never_panics(s in "\\PC{0,300}") {
            let _ = decode(&s);
        }
    }

    #[test]
    fn unknown_words_and_wrong_length_are_named() {
        let p = encode(&[3; 32]);
        let mut words: Vec<&str> = p.split(' ').collect();
        words[6] = "peerpostx";
        assert_eq!(
            decode(&words.join(" ")),
            Err(PhraseError::UnknownWord {
                position: 7,
                word: "peerpostx".into()
            })
        );
        assert_eq!(decode("abandon zoo"), Err(PhraseError::WrongLength(2)));
    }

    #[test]
    fn numbered_and_abbreviated_phrases_are_accepted() {
        let seed = [42; 32];
        let p = encode(&seed);
        let typed: String = p
            .split(' ')
            .enumerate()
            .map(|(i, w)| format!("{}. {}\n", i + 1, &w[..w.len().min(4)]))
            .collect();
        assert_eq!(decode(&typed).unwrap(), seed);
    }
}
