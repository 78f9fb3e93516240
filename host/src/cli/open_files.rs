//! The process's limit on open files. A node holds a socket for each
//! twin's broker session, so the soft limit most systems give a process
//! (1,024) stopped it at about a thousand twins: the sessions past it
//! failed to connect ("Too many open files") while everything else ran.
//! Servers raise their soft limit to the hard one, which needs no
//! privilege; the node does the same when it starts. (A sleeping twin
//! whose session is parked holds none, so the limit bounds the twins
//! awake at once, and those a restart connects.)

/// Descriptors a node uses besides its twins' sessions (its store, its
/// listeners, the runtime's), with room to spare.
const OWN_FILES: libc::rlim_t = 64;

/// Raises the soft limit on open files to the hard one, and says how many
/// twins' sessions the limit leaves room for.
pub(super) fn raise() {
    match raise_to_hard() {
        Ok(limit) if limit < 4 * OWN_FILES => tracing::warn!(
            limit,
            "the limit on open files leaves room for few twins: each holds a socket; raise it (ulimit -n, systemd's LimitNOFILE)"
        ),
        Ok(limit) => tracing::info!(
            limit,
            twins = limit - OWN_FILES,
            "open files: each connected twin's broker session holds one (a parked one, asleep, none)"
        ),
        Err(e) => tracing::warn!("cannot read or raise the limit on open files: {e}"),
    }
}

/// The soft limit on open files after raising it to the hard one where
/// the system allows.
fn raise_to_hard() -> std::io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given. It may
        // refuse (macOS takes no unlimited soft limit): the limit stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}
