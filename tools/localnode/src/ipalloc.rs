//! Pod IPs: every pod gets its own loopback address, so two pods can listen on the same
//! port. Linux routes all of 127.0.0.0/8 to `lo`, so binding 127.x.y.z needs no setup.
//!
//! A runner owns one /16 (127.<octet>.0.0) for its pods. Several runners may share a host
//! (a developer's cluster beside a test cluster), so the octet is claimed with an flock on a
//! file in the temp directory: the kernel drops the lock when the runner dies, so a crashed
//! runner never leaks its range. The preferred octet is a hash of the node name, which keeps
//! a restarted runner on the same range as the pods it left behind.

use std::collections::HashSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

pub struct IpPool {
    octet: u8,
    used: HashSet<Ipv4Addr>,
    next: u16,
    /// Holds the flock on this runner's octet for the life of the process.
    _lock: Option<File>,
}

/// FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

pub fn preferred_octet(node_name: &str) -> u8 {
    // 1..=254: 127.0.x.x holds 127.0.0.1, 127.255.x.x looks like a broadcast range.
    (fnv1a(node_name) % 254) as u8 + 1
}

/// Index 1.. of the /16 to an address, skipping .0 and .255 in the last octet so no pod IP
/// looks like a network or broadcast address to a tool that cares.
fn address(octet: u8, index: u16) -> Option<Ipv4Addr> {
    let usable_per_block = 254u16;
    let block = (index - 1) / usable_per_block;
    let host = (index - 1) % usable_per_block + 1;
    let third = u8::try_from(block).ok()?;
    let fourth = u8::try_from(host).ok()?;
    Some(Ipv4Addr::new(127, octet, third, fourth))
}

const MAX_INDEX: u16 = 254 * 256;

impl IpPool {
    /// A pool on a fixed octet without a lock (tests).
    pub fn with_octet(octet: u8) -> Self {
        Self {
            octet,
            used: HashSet::new(),
            next: 1,
            _lock: None,
        }
    }

    /// Claims a free octet on this host, starting from the node name's preferred one.
    pub fn claim(node_name: &str, lock_dir: &Path) -> Self {
        let preferred = preferred_octet(node_name);
        if std::fs::create_dir_all(lock_dir).is_ok() {
            for step in 0..254u16 {
                let octet = ((u16::from(preferred) - 1 + step) % 254) as u8 + 1;
                let path = lock_dir.join(format!("127.{octet}.lock"));
                let Ok(file) = File::options().create(true).append(true).open(&path) else {
                    continue;
                };
                // SAFETY: flock on a descriptor this function owns; no memory is involved.
                let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                if rc == 0 {
                    tracing::info!(range = %format!("127.{octet}.0.0/16"), "claimed pod IP range");
                    return Self {
                        _lock: Some(file),
                        ..Self::with_octet(octet)
                    };
                }
            }
        }
        tracing::warn!(
            octet = preferred,
            "could not lock a pod IP range; using the preferred one unlocked"
        );
        Self::with_octet(preferred)
    }

    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        for _ in 0..MAX_INDEX {
            let index = self.next;
            self.next = if self.next >= MAX_INDEX {
                1
            } else {
                self.next + 1
            };
            if let Some(ip) = address(self.octet, index)
                && self.used.insert(ip)
            {
                return Some(ip);
            }
        }
        None
    }

    /// Marks an address a pod already has (from a previous runner) as taken. Returns false
    /// when it is not a usable pod IP or another pod holds it.
    pub fn reserve(&mut self, ip: Ipv4Addr) -> bool {
        let [a, b, ..] = ip.octets();
        a == 127 && b != 0 && self.used.insert(ip)
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_loopback_and_skip_edges() {
        let mut pool = IpPool::with_octet(7);
        let mut seen = HashSet::new();
        for _ in 0..600 {
            let ip = pool.allocate().expect("pool has room");
            let [a, b, _, d] = ip.octets();
            assert_eq!((a, b), (127, 7));
            assert!(d != 0 && d != 255, "{ip}");
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(seen.len(), 600);
        assert!(seen.contains(&Ipv4Addr::new(127, 7, 0, 1)));
        assert!(seen.contains(&Ipv4Addr::new(127, 7, 1, 1)));
    }

    #[test]
    fn released_addresses_are_reused_and_reserved_ones_skipped() {
        let mut pool = IpPool::with_octet(3);
        assert!(pool.reserve(Ipv4Addr::new(127, 3, 0, 1)));
        assert!(!pool.reserve(Ipv4Addr::new(127, 3, 0, 1)));
        assert!(!pool.reserve(Ipv4Addr::new(127, 0, 0, 1)));
        assert!(!pool.reserve(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 3, 0, 2)));
        pool.release(Ipv4Addr::new(127, 3, 0, 1));
        // The cursor moves on; a released address comes back only after a wrap.
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(127, 3, 0, 3)));
    }

    #[test]
    fn exhaustion_returns_none_and_wraps_to_released() {
        let mut pool = IpPool::with_octet(9);
        let all: Vec<_> = std::iter::from_fn(|| pool.allocate()).collect();
        assert_eq!(all.len(), usize::from(MAX_INDEX));
        assert_eq!(pool.allocate(), None);
        pool.release(all[10]);
        assert_eq!(pool.allocate(), Some(all[10]));
    }

    #[test]
    fn preferred_octet_is_stable_and_in_range() {
        assert_eq!(preferred_octet("triad-dev"), preferred_octet("triad-dev"));
        for name in ["a", "b", "triad-dev", "triad-nodetest", ""] {
            let o = preferred_octet(name);
            assert!((1..=254).contains(&o));
        }
    }

    #[test]
    fn two_claims_on_one_host_get_different_octets() {
        let dir = std::env::temp_dir().join(format!("localnode-ipalloc-{}", std::process::id()));
        let a = IpPool::claim("same", &dir);
        let b = IpPool::claim("same", &dir);
        assert_ne!(a.octet, b.octet);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
