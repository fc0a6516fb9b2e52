//! Fault injection for the durable path: tests make chosen writes and fsyncs
//! fail the way real disks do (disk full, I/O error, short write, failed fsync)
//! and then check exactly what was acknowledged and what survived.
//!
//! Every write and fsync of the WAL, of segments and of the manifest asks
//! [`Faults::check`] first. With nothing injected that is one uncontended lock
//! per group commit. Only tests can plan faults: the module is private to
//! storage, and [`Faults::inject`] exists only in test builds.

use std::io;
use std::sync::Mutex;

/// The I/O operations a fault can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    WalWrite,
    WalSync,
    SegmentWrite,
    ManifestWrite,
}

/// How the operation fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Only tests plan faults, so outside them no variant is ever made.
#[cfg_attr(not(test), allow(dead_code))]
pub enum FaultKind {
    /// `ENOSPC`: the disk is full.
    NoSpace,
    /// `EIO`: the device reported an error.
    Eio,
    /// Part of the buffer reaches the file, then the write fails.
    ShortWrite,
}

impl FaultKind {
    pub fn to_error(self) -> io::Error {
        match self {
            FaultKind::NoSpace => io::Error::new(io::ErrorKind::StorageFull, "No space left on device (injected)"),
            FaultKind::Eio => io::Error::other("Input/output error (injected)"),
            FaultKind::ShortWrite => io::Error::new(io::ErrorKind::WriteZero, "short write (injected)"),
        }
    }
}

#[derive(Debug)]
struct Fault {
    op: IoOp,
    kind: FaultKind,
    /// How many more operations fail; `None` until cleared (a full disk).
    remaining: Option<usize>,
}

/// The faults currently planned. Shared by the engine and the test.
#[derive(Debug, Default)]
pub struct Faults {
    planned: Mutex<Vec<Fault>>,
}

impl Faults {
    #[cfg(test)]
    /// Makes the next `times` operations `op` fail with `kind` (`None`: until [`Faults::clear`]).
    pub fn inject(&self, op: IoOp, kind: FaultKind, times: Option<usize>) {
        self.planned.lock().expect("faults lock poisoned").push(Fault { op, kind, remaining: times });
    }

    #[cfg(test)]
    /// Removes every planned fault: the disk has space again, the device recovered.
    pub fn clear(&self) {
        self.planned.lock().expect("faults lock poisoned").clear();
    }

    /// The fault due for this operation, if any.
    pub fn check(&self, op: IoOp) -> Option<FaultKind> {
        let mut planned = self.planned.lock().expect("faults lock poisoned");
        let index = planned.iter().position(|f| f.op == op)?;
        let kind = planned[index].kind;
        if let Some(remaining) = &mut planned[index].remaining {
            *remaining -= 1;
            if *remaining == 0 {
                planned.remove(index);
            }
        }
        Some(kind)
    }
}
