//! SHA-256, the one digest auditlake computes outside the Merkle tree:
//! token secrets, SCRAM keys, checkpoint block files. One function, so the
//! layers that need it do not reach into each other for it.

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().try_into().expect("SHA-256 is 32 bytes")
}
