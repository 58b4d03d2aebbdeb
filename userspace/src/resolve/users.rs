//! Users by name and by uid.
//!
//! Users are looked up through NSS (`getpwnam_r`/`getpwuid_r`), so users
//! from SSSD/LDAP and systemd's `DynamicUser=` resolve like those in
//! `/etc/passwd`. `nix` (`unistd::User`) makes the calls: it is the
//! maintained, widely used binding, grows the buffer on `ERANGE` instead of
//! truncating, and adds no cache of its own (`uzers` keeps one, which would
//! hide a user created later; the callers here decide what to cache).

use std::io;

use nix::unistd::{Uid, User};

use super::with_context;

/// The uid of user `name`, through NSS (see the module documentation).
pub fn uid_by_name(name: &str) -> io::Result<Option<u32>> {
    nss_result(User::from_name(name), &format!("looking up user {name}"))
        .map(|user| user.map(|u| u.uid.as_raw()))
}

/// The name of user `uid`, through NSS (see the module documentation).
pub fn user_name(uid: u32) -> io::Result<Option<String>> {
    nss_result(
        User::from_uid(Uid::from_raw(uid)),
        &format!("looking up uid {uid}"),
    )
    .map(|user| user.map(|u| u.name))
}

/// "Not found" is `Ok(None)`: glibc says so with a null result, some NSS
/// modules with `ENOENT` or `ESRCH` (getpwnam_r(3)).
fn nss_result(result: nix::Result<Option<User>>, what: &str) -> io::Result<Option<User>> {
    match result {
        Ok(user) => Ok(user),
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH) => Ok(None),
        Err(errno) => Err(with_context(io::Error::from(errno), what)),
    }
}
