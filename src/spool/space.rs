//! Free space on the spool's filesystem, against the reserve of `--min-free-space`: new mail
//! is refused (`452 4.3.1` at MAIL) while what is left is the reserve, so that what the
//! queue already holds can still be written: deferrals (state records), DSNs, the suppression
//! list and the webhook outboxes.
//!
//! Measured with statvfs at most once per `MEASURE_EVERY`, by whichever caller comes first
//! after that (a session's MAIL, or the scheduler every few seconds for the gauge); everyone
//! else reads the last figures. A change between short and enough is logged once.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How old the figures may be.
pub const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// `--min-free-space`: bytes, or a share of the filesystem's size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MinFree {
    Bytes(u64),
    /// Percent, above 0 and below 100.
    Percent(f64),
}

impl MinFree {
    /// `0` (off), `BYTES` with a K, M or G suffix, or `N%` (`0.5%` too).
    pub fn parse(s: &str) -> Result<MinFree, String> {
        if s == "0" {
            return Ok(MinFree::Bytes(0));
        }
        if let Some(p) = s.strip_suffix('%') {
            return match p.parse::<f64>() {
                Ok(p) if (0.0..100.0).contains(&p) => Ok(MinFree::Percent(p)),
                _ => Err(format!("{s:?} is not a percentage from 0% to below 100%")),
            };
        }
        crate::config::parse_size(s)
            .map(MinFree::Bytes)
            .map_err(|_| format!("{s:?} is not a size like 64M or a percentage like 1%"))
    }

    /// The reserve in bytes on a filesystem of `total` bytes.
    fn bytes(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(n) => n,
            MinFree::Percent(p) => (total as f64 * p / 100.0).ceil() as u64,
        }
    }
}

/// The spool's free space, as last measured.
pub struct Space {
    dir: PathBuf,
    min: MinFree,
    epoch: Instant,
    /// When it was last measured, in ms since `epoch`, plus one (0: never).
    measured: AtomicU64,
    /// Bytes available (to the relay's user) and the reserve, as last measured.
    free: AtomicU64,
    reserve: AtomicU64,
    /// Whether the last measure found less than the reserve free.
    short: AtomicBool,
    /// Whether the last statvfs failed (logged once).
    failing: AtomicBool,
}

impl Space {
    pub fn new(dir: &Path, min: MinFree) -> Space {
        Space {
            dir: dir.to_path_buf(),
            min,
            epoch: Instant::now(),
            measured: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
            reserve: AtomicU64::new(0),
            short: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        }
    }

    /// Whether a new message of `size` bytes (0: not declared) may come in: free space stays
    /// above the reserve with it. Always true with no reserve (`--min-free-space 0`): then only
    /// a write that fails refuses mail.
    pub fn has_room(&self, size: u64) -> bool {
        if self.min == MinFree::Bytes(0) {
            return true;
        }
        self.refresh();
        let free = self.free.load(Ordering::Relaxed);
        free >= self.reserve.load(Ordering::Relaxed).saturating_add(size)
    }

    /// Bytes free, measured at most `MEASURE_EVERY` ago; `None` if statvfs fails.
    pub fn free(&self) -> Option<u64> {
        self.refresh();
        match self.failing.load(Ordering::Relaxed) {
            true => None,
            false => Some(self.free.load(Ordering::Relaxed)),
        }
    }

    /// Measures again if the figures are older than `MEASURE_EVERY`, in one caller only.
    fn refresh(&self) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.measured.load(Ordering::Relaxed);
        let stale = last == 0 || now - last >= MEASURE_EVERY.as_millis() as u64;
        if stale
            && self
                .measured
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.measure();
        }
    }

    fn measure(&self) {
        let (free, total) = match statvfs(&self.dir) {
            Ok(figures) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    log::info!("spool: free space can be measured again");
                }
                figures
            }
            Err(e) => {
                // Not known: mail is taken, and a write that fails refuses it.
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::warn!("spool: cannot measure free space: {e}");
                }
                (u64::MAX, 0)
            }
        };
        let reserve = self.min.bytes(total);
        self.free.store(free, Ordering::Relaxed);
        self.reserve.store(reserve, Ordering::Relaxed);
        let short = free < reserve;
        if self.short.swap(short, Ordering::Relaxed) != short {
            let (free, reserve) = (mib(free), mib(reserve));
            if short {
                log::warn!(
                    "spool: {free} free, under --min-free-space ({reserve}): new mail is \
                     refused (452 4.3.1) until there is more; queued mail is still delivered"
                );
            } else {
                log::info!(
                    "spool: {free} free, over --min-free-space ({reserve}): new mail is taken again"
                );
            }
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Bytes available to the relay's user, and the filesystem's size.
fn statvfs(dir: &Path) -> io::Result<(u64, u64)> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the spool path"))?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((
        (st.f_bavail as u64).saturating_mul(unit),
        (st.f_blocks as u64).saturating_mul(unit),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_free_space_is_bytes_or_a_percentage() {
        let cases: &[(&str, Result<MinFree, ()>)] = &[
            ("0", Ok(MinFree::Bytes(0))),
            ("64M", Ok(MinFree::Bytes(64 << 20))),
            ("1048576", Ok(MinFree::Bytes(1 << 20))),
            ("1%", Ok(MinFree::Percent(1.0))),
            ("0.5%", Ok(MinFree::Percent(0.5))),
            ("0%", Ok(MinFree::Percent(0.0))),
            ("100%", Err(())),
            ("-1%", Err(())),
            ("%", Err(())),
            ("12Q", Err(())),
            ("", Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(&MinFree::parse(input).map_err(|_| ()), want, "{input}");
        }
        assert_eq!(MinFree::Percent(1.0).bytes(1000), 10);
        assert_eq!(MinFree::Percent(0.5).bytes(1001), 6, "rounded up");
        assert_eq!(MinFree::Bytes(7).bytes(1000), 7);
    }

    #[test]
    fn room_is_what_is_free_above_the_reserve_measured_once_a_second() {
        let dir = std::env::temp_dir();
        let (free, total) = statvfs(&dir).unwrap();
        assert!(free > 0 && total >= free);
        assert!(Space::new(&dir, MinFree::Bytes(1)).has_room(0));
        assert!(!Space::new(&dir, MinFree::Bytes(free + (1 << 30))).has_room(0));
        assert!(!Space::new(&dir, MinFree::Percent(99.9)).has_room(free));
        // Off: always room, whatever the declared size.
        assert!(Space::new(&dir, MinFree::Bytes(0)).has_room(u64::MAX));
        // A declared size counts against what is left above the reserve.
        let space = Space::new(&dir, MinFree::Bytes(1));
        assert!(!space.has_room(u64::MAX - 1));
        // Figures are reused within the second: a changed figure is not seen yet.
        space.free.store(0, Ordering::Relaxed);
        assert!(!space.has_room(0));
        assert_eq!(space.free(), Some(0));
        // A path that cannot be measured: not known, so mail is taken.
        let gone = Space::new(Path::new("/nonexistent/mxrelay"), MinFree::Bytes(1 << 40));
        assert!(gone.has_room(0));
        assert_eq!(gone.free(), None);
    }
}
