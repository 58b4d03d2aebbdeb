//! The daemon's Unix sockets in its run directory (`query.sock`,
//! `metrics.sock`): bound connectable by anyone (each server decides per
//! request what a caller may learn), replacing a stale socket file a
//! previous daemon left (the caller holds the run directory's instance
//! lock), and removed when the daemon lets go of them.

use std::{
    fs, io,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::PathBuf,
};

use tokio::net::UnixListener;
use tracing::warn;

/// Errors binding a run-directory socket.
#[derive(Debug, thiserror::Error)]
pub enum RunSocketError {
    #[error("{} exists and is not a socket; move it away or give the daemon another --run-dir", path.display())]
    NotASocket { path: PathBuf },
    #[error("{what} {} failed", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A bound socket's file: removed on drop.
#[derive(Debug)]
pub struct RunSocket {
    path: PathBuf,
}

impl RunSocket {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for RunSocket {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            warn!("removing {} failed: {e}", self.path.display());
        }
    }
}

/// Binds a listener at `path` (mode 0666). Must run inside the runtime.
pub fn bind(path: PathBuf) -> Result<(UnixListener, RunSocket), RunSocketError> {
    let io_error = |what, source| RunSocketError::Io {
        what,
        path: path.clone(),
        source,
    };
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => {
            fs::remove_file(&path).map_err(|e| io_error("removing the stale socket", e))?;
        }
        Ok(_) => return Err(RunSocketError::NotASocket { path }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("inspecting", e)),
    }
    let listener = UnixListener::bind(&path).map_err(|e| io_error("binding", e))?;
    // From here on the file is ours: it goes with the socket, also on error.
    let socket = RunSocket { path: path.clone() };
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
        .map_err(|e| io_error("setting the mode of", e))?;
    Ok((listener, socket))
}
