//! Sharding functions: which shard a key belongs to.
//!
//! `pg_bigint_hash` is PostgreSQL's own hash partitioning of a `bigint`
//! (`hashint8extended` with the partition seed, combined as
//! `compute_partition_hash_value` does), so a row lands in the shard whose
//! number is the remainder of the hash partition PostgreSQL would pick.
//! `sha1` is PgCat's: the last four bytes of the SHA-1 of the key's
//! decimal text, modulo the number of shards.

use sha1::{Digest, Sha1};

use crate::proxy::config::ShardingFunction;

/// PostgreSQL's `HASH_PARTITION_SEED`.
const PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// PostgreSQL's `hash_bytes_uint32_extended` (Bob Jenkins' lookup3).
fn hash_u32_extended(k: u32, seed: u64) -> u64 {
    let init = 0x9e37_79b9u32.wrapping_add(4).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    a = a.wrapping_add(k);
    finish(&mut a, &mut b, &mut c);
    ((b as u64) << 32) | c as u64
}

/// PostgreSQL's `hash_combine64`.
fn hash_combine64(a: u64, b: u64) -> u64 {
    a ^ b
        .wrapping_add(0x49a0_f4dd_15e5_a8e3)
        .wrapping_add(a << 54)
        .wrapping_add(a >> 7)
}

/// The partition hash of a `bigint` key, as `PARTITION BY HASH` computes
/// it.
pub fn pg_bigint_hash(key: i64) -> u64 {
    let k = key as u64;
    let mut lo = k as u32;
    let hi = (k >> 32) as u32;
    lo ^= if key >= 0 { hi } else { !hi };
    hash_combine64(0, hash_u32_extended(lo, PARTITION_SEED))
}

/// PgCat's sha1 sharding value.
pub fn sha1_hash(key: i64) -> u64 {
    let digest = Sha1::digest(key.to_string().as_bytes());
    u32::from_be_bytes([digest[16], digest[17], digest[18], digest[19]]) as u64
}

/// The shard of `key` among `shards`.
pub fn shard_of(function: ShardingFunction, key: i64, shards: usize) -> usize {
    let h = match function {
        ShardingFunction::PgBigintHash => pg_bigint_hash(key),
        ShardingFunction::Sha1 => sha1_hash(key),
    };
    (h % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_bigint_hash_matches_pgcats_vectors() {
        let five = [
            (0, [1, 4, 5, 14, 19, 39, 40, 46, 47, 53]),
            (1, [2, 3, 11, 17, 21, 23, 30, 49, 51, 54]),
            (2, [6, 7, 15, 16, 18, 20, 25, 28, 34, 35]),
            (3, [8, 12, 13, 22, 29, 31, 33, 36, 41, 43]),
            (4, [9, 10, 24, 26, 27, 32, 37, 38, 42, 45]),
        ];
        for (shard, keys) in five {
            for k in keys {
                assert_eq!(shard_of(ShardingFunction::PgBigintHash, k, 5), shard, "{k}");
            }
        }
        assert_eq!(pg_bigint_hash(0), 0x0c84_40b7_4fd6_99b0);
        assert_eq!(pg_bigint_hash(-1), 0x0400_bc25_1f3b_afa5);
        // The halves fold: 2^32 and 1 hash alike, as in PostgreSQL.
        assert_eq!(pg_bigint_hash(1 << 32), pg_bigint_hash(1));
        let three: Vec<usize> = (1..=18)
            .map(|k| shard_of(ShardingFunction::PgBigintHash, k, 3))
            .collect();
        assert_eq!(
            three,
            [2, 0, 1, 0, 2, 0, 1, 0, 2, 1, 2, 2, 1, 1, 0, 0, 2, 0]
        );
    }

    #[test]
    fn sha1_matches_pgcats_vectors() {
        let twelve = [
            4, 7, 8, 3, 6, 0, 0, 10, 3, 11, 1, 7, 4, 4, 11, 2, 5, 0, 8, 3,
        ];
        for (k, shard) in twelve.into_iter().enumerate() {
            assert_eq!(shard_of(ShardingFunction::Sha1, k as i64, 12), shard, "{k}");
        }
        assert_eq!(shard_of(ShardingFunction::Sha1, -1, 3), 1);
        assert_eq!(shard_of(ShardingFunction::Sha1, 1000, 3), 0);
    }
}
