//! The one hash every node and client agrees on: topic names to bundles, message keys to
//! partitions and to key_shared consumers.

/// A 32-bit hash of `bytes`: FNV-1a, then MurmurHash3's finalizer so inputs that differ only
/// at the end still spread over the high bits. Stable across versions and platforms, which
/// the placement of existing topics and the order of keyed messages depend on.
pub fn stable_hash(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &byte in bytes {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned values: a change here moves every topic to another bundle and every key to
    /// another partition.
    #[test]
    fn hash_values_are_stable() {
        assert_eq!(stable_hash(b""), 0xab3e_7c0b);
        assert_eq!(stable_hash(b"key-1"), 0x63e4_d497);
        assert_eq!(
            stable_hash(b"persistent://public/default/orders"),
            0x8950_5fab
        );
    }
}
