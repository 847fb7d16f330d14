//! `--user NAME`: after the listeners are bound (port 25 needs root or
//! CAP_NET_BIND_SERVICE), switch the whole process to an unprivileged user and its group.
//! Also the open files limit, raised at start.

use std::ffi::{CStr, CString};
use std::io;

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
