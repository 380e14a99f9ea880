//! The erasure code behind a trait, with an id written into every fragment: fragments of
//! different codecs are not interchangeable, so the id lets a later build switch codecs without
//! misreading old fragments. The only module that imports reed-solomon-erasure.

use reed_solomon_erasure::galois_8::ReedSolomon;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("invalid parameters n={n}, k={k}")]
    Params { n: usize, k: usize },
    #[error("only {have} usable fragments, {need} needed")]
    TooFewShards { have: usize, need: usize },
    #[error("fragments of unequal length")]
    ShardLength,
    #[error("erasure coding failed: {0}")]
    Coding(String),
}

/// A systematic (n, k) erasure code: any k of the n shards rebuild the data.
pub trait ErasureCodec: Send + Sync {
    /// Written into every fragment.
    fn id(&self) -> u8;
    /// Splits `data` into `k` equal data shards (zero-padded) and adds `n − k` parity shards.
    fn encode(&self, data: &[u8], n: usize, k: usize) -> Result<Vec<Vec<u8>>, CodecError>;
    /// Rebuilds the data (its first `len` bytes) from at least `k` shards (`None` = missing).
    fn decode(
        &self,
        shards: Vec<Option<Vec<u8>>>,
        n: usize,
        k: usize,
        len: usize,
    ) -> Result<Vec<u8>, CodecError>;
    /// Recomputes one missing shard (repair) from at least `k` others.
    fn repair(
        &self,
        shards: Vec<Option<Vec<u8>>>,
        n: usize,
        k: usize,
        index: usize,
    ) -> Result<Vec<u8>, CodecError>;
}

/// Reed–Solomon over GF(2^8) (reed-solomon-erasure with its SIMD kernel): n ≤ 256.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReedSolomon8;

pub const CODEC_RS8: u8 = 1;

fn rs(n: usize, k: usize) -> Result<ReedSolomon, CodecError> {
    if k == 0 || k > n || n > 256 {
        return Err(CodecError::Params { n, k });
    }
    if n == k {
        // No parity: the library wants at least one parity shard; handled by the callers.
        return Err(CodecError::Params { n, k });
    }
    ReedSolomon::new(k, n - k).map_err(|e| CodecError::Coding(format!("{e:?}")))
}

impl ReedSolomon8 {
    fn fill(
        &self,
        mut shards: Vec<Option<Vec<u8>>>,
        n: usize,
        k: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, CodecError> {
        if shards.len() != n {
            return Err(CodecError::Params { n, k });
        }
        let have = shards.iter().filter(|s| s.is_some()).count();
        if have < k {
            return Err(CodecError::TooFewShards { have, need: k });
        }
        let len = shards.iter().flatten().map(Vec::len).next().unwrap_or(0);
        if shards.iter().flatten().any(|s| s.len() != len) {
            return Err(CodecError::ShardLength);
        }
        if n == k {
            return Ok(shards);
        }
        rs(n, k)?
            .reconstruct(&mut shards)
            .map_err(|e| CodecError::Coding(format!("{e:?}")))?;
        Ok(shards)
    }
}

impl ErasureCodec for ReedSolomon8 {
    fn id(&self) -> u8 {
        CODEC_RS8
    }

    fn encode(&self, data: &[u8], n: usize, k: usize) -> Result<Vec<Vec<u8>>, CodecError> {
        if k == 0 || k > n || n > 256 {
            return Err(CodecError::Params { n, k });
        }
        // Shards are multiples of 64 bytes (the SIMD kernel's width), at least 64.
        let shard = data.len().div_ceil(k).div_ceil(64).max(1) * 64;
        let mut shards: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; shard]).collect();
        for (i, chunk) in data.chunks(shard).enumerate() {
            shards[i][..chunk.len()].copy_from_slice(chunk);
        }
        if n > k {
            rs(n, k)?
                .encode(&mut shards)
                .map_err(|e| CodecError::Coding(format!("{e:?}")))?;
        }
        Ok(shards)
    }

    fn decode(
        &self,
        shards: Vec<Option<Vec<u8>>>,
        n: usize,
        k: usize,
        len: usize,
    ) -> Result<Vec<u8>, CodecError> {
        let full = self.fill(shards, n, k)?;
        let mut out = Vec::with_capacity(len);
        for s in full.into_iter().take(k).flatten() {
            out.extend_from_slice(&s);
        }
        if out.len() < len {
            return Err(CodecError::ShardLength);
        }
        out.truncate(len);
        Ok(out)
    }

    fn repair(
        &self,
        shards: Vec<Option<Vec<u8>>>,
        n: usize,
        k: usize,
        index: usize,
    ) -> Result<Vec<u8>, CodecError> {
        if index >= n {
            return Err(CodecError::Params { n, k });
        }
        let mut full = self.fill(shards, n, k)?;
        full.swap_remove(index)
            .ok_or(CodecError::TooFewShards { have: 0, need: k })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any k of n shards rebuild the data; k − 1 do not.
        #[test]
        fn any_k_rebuild_and_k_minus_one_do_not(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            k in 1usize..8, extra in 0usize..10, seed in any::<u64>(),
        ) {
            let n = k + extra;
            let codec = ReedSolomon8;
            let shards = codec.encode(&data, n, k).unwrap();
            prop_assert_eq!(shards.len(), n);
            // A pseudo-random choice of exactly k survivors.
            let mut order: Vec<usize> = (0..n).collect();
            let mut s = seed | 1;
            for i in (1..n).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                order.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let keep: Vec<usize> = order[..k].to_vec();
            let partial: Vec<Option<Vec<u8>>> = (0..n).map(|i| keep.contains(&i).then(|| shards[i].clone())).collect();
            prop_assert_eq!(codec.decode(partial.clone(), n, k, data.len()).unwrap(), data.clone());
            // Each missing shard is repaired exactly.
            for i in (0..n).filter(|i| !keep.contains(i)) {
                prop_assert_eq!(&codec.repair(partial.clone(), n, k, i).unwrap(), &shards[i]);
            }
            if k > 1 {
                let fewer: Vec<Option<Vec<u8>>> = (0..n).map(|i| keep[..k - 1].contains(&i).then(|| shards[i].clone())).collect();
                let too_few = matches!(codec.decode(fewer, n, k, data.len()), Err(CodecError::TooFewShards { .. }));
                prop_assert!(too_few, "k - 1 shards must not rebuild");
            }
        }
    }

    #[test]
    fn glacier_parameters_work() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let shards = ReedSolomon8.encode(&data, 48, 5).unwrap();
        let partial: Vec<Option<Vec<u8>>> = (0..48)
            .map(|i| (i >= 43).then(|| shards[i].clone()))
            .collect();
        assert_eq!(
            ReedSolomon8.decode(partial, 48, 5, data.len()).unwrap(),
            data
        );
        assert!(ReedSolomon8.encode(&data, 300, 5).is_err());
        assert!(ReedSolomon8.encode(&data, 4, 5).is_err());
    }
}
