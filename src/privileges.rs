//! `--user NAME`: after the listeners are bound (port 25 needs root or
//! CAP_NET_BIND_SERVICE), switch the whole process to an unprivileged user and its group.
//! Also what running unprivileged needs: files created owner-only, the spool's owner and the
//! modes of secret files checked at start, and the open files limit, raised at start.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub struct Account {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

pub fn lookup(name: &str) -> io::Result<Account> {
    let cname = CString::new(name).map_err(|_| io::Error::other("user name contains NUL"))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives the use of pwd's strings.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Err(io::Error::other(format!("no such user {name:?}")));
    }
    // SAFETY: pw_name points into buf, NUL-terminated by getpwnam_r.
    let _ = unsafe { CStr::from_ptr(pwd.pw_name) };
    Ok(Account {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// Drops to `name`. Running as that user already is fine; anything else needs root.
pub fn drop_to(name: &str) -> io::Result<()> {
    let account = lookup(name)?;
    // SAFETY: plain syscalls without pointers (setgroups gets a one-element array).
    unsafe {
        if libc::getuid() == account.uid && libc::geteuid() == account.uid {
            return Ok(());
        }
        if libc::geteuid() != 0 {
            return Err(io::Error::other(format!(
                "--user {name}: only root can switch users"
            )));
        }
        let groups = [account.gid];
        if libc::setgroups(1, groups.as_ptr()) != 0
            || libc::setgid(account.gid) != 0
            || libc::setuid(account.uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
        // glibc applies setuid to every thread; make sure there is no way back.
        if libc::setuid(0) == 0 {
            return Err(io::Error::other(
                "privileges could be regained after dropping them",
            ));
        }
    }
    log::info!(
        "running as user {name} (uid {}, gid {})",
        account.uid,
        account.gid
    );
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: each client takes two descriptors
/// (its socket and the copy kept to cut it at shutdown), and Debian's default soft limit of
/// 1024 would refuse clients long before `--max-connections` 1000. Warns when even the hard
/// limit is short of `needed`.
pub fn raise_open_files_limit(needed: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim = wanted;
            }
        }
    }
    if lim.rlim_cur < needed {
        log::warn!(
            "the open files limit ({}) is below the {needed} that --max-connections needs; \
             clients may be refused (raise it with ulimit -n or LimitNOFILE=)",
            lim.rlim_cur
        );
    }
}

/// Everything mxrelay creates (spool, keys it generates, the event log, sockets) is its own
/// alone: the umask takes group and other bits away from every new file and directory.
pub fn owner_only_files() {
    // SAFETY: umask only sets the process's file mode mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Root must not run a spool that belongs to another user: the files it would create there
/// (slots, the suppression log, outboxes) would be root's, and the owner could no longer
/// read them when it runs the relay itself. Such a relay should drop to the owner instead.
pub fn check_spool_owner(spool: &Path) -> io::Result<()> {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let owner = match std::fs::metadata(spool) {
        Ok(m) => m.uid(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if owner == 0 {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "the spool {} belongs to uid {owner}, but mxrelay runs as root: run it as that user, \
         or as root with --user NAME (it binds the ports, reads the keys, then switches)",
        spool.display()
    )))
}

/// A file holding a secret (a key, passwords): refused when it is not a regular file, when
/// anyone but its owner and group can read it, or anyone but its owner can change it. Group
/// read is allowed: Debian's `ssl-cert` group reads keys that way.
pub fn check_secret_file(flag: &str, path: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| io::Error::new(e.kind(), format!("--{flag}: {}: {e}", path.display())))?;
    let mode = meta.mode() & 0o7777;
    let problem = if !meta.is_file() {
        Some("is not a regular file".to_string())
    } else if mode & 0o004 != 0 {
        Some(format!("is readable by every user (mode {mode:04o})"))
    } else if mode & 0o022 != 0 {
        Some(format!(
            "can be changed by users other than its owner (mode {mode:04o})"
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(io::Error::other(format!(
            "--{flag}: {} {p}; it holds a secret: chmod 600 {0} (or 640 with a trusted group)",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_files_must_be_private() {
        let dir = std::env::temp_dir().join(format!("mxrelay-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "secret").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o640, true),
            (0o400, true),
            (0o644, false),
            (0o620, false),
            (0o602, false),
        ] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = check_secret_file("users", &file);
            assert_eq!(r.is_ok(), ok, "{mode:o}: {r:?}");
            if let Err(e) = r {
                let e = e.to_string();
                assert!(e.starts_with("--users: ") && e.contains("chmod 600"), "{e}");
            }
        }
        assert!(check_secret_file("users", &dir).is_err(), "a directory");
        assert!(check_secret_file("users", &dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
