//! The control socket: `spool/control.sock`, a Unix socket only the spool's owner can reach
//! (the spool directory is 0700, the socket 0600). `mxrelay queue` sends one command line
//! and reads one answer line (`ok ...` or `error ...`). Commands are carried out by the
//! scheduler, so it stays the only writer of queued state. `mxrelay suppression` sends its
//! changes the same way (`SUPPRESSION ...`, see `suppression::remote`); those are carried out
//! here, on the daemon's list.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};

use crate::spool::id;
use crate::suppression::{Suppressions, remote};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Retry now: one message or (None) the whole queue.
    Flush(Option<String>),
    /// Remove one message or (None) every message.
    Delete(Option<String>),
    Hold(Option<String>),
    Release(Option<String>),
}

impl Command {
    pub fn target(&self) -> Option<&str> {
        match self {
            Command::Flush(t) | Command::Delete(t) | Command::Hold(t) | Command::Release(t) => {
                t.as_deref()
            }
        }
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Command::Flush(_) => "flushed",
            Command::Delete(_) => "deleted",
            Command::Hold(_) => "held",
            Command::Release(_) => "released",
        }
    }

    /// `FLUSH [ID]`, `DELETE ID|ALL`, `HOLD ID|ALL`, `RELEASE ID|ALL`.
    pub fn parse(line: &str) -> Result<Command, String> {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let target = words.next();
        if words.next().is_some() {
            return Err("too many arguments".into());
        }
        let target = match target {
            None | Some("ALL") => None,
            Some(t) if id::is_valid(t) => Some(t.to_string()),
            Some(t) => return Err(format!("{t:?} is not a queue id")),
        };
        match (verb.as_str(), &target) {
            ("FLUSH", _) => Ok(Command::Flush(target)),
            ("DELETE", _) if line.split_whitespace().count() == 2 => Ok(Command::Delete(target)),
            ("HOLD", _) if line.split_whitespace().count() == 2 => Ok(Command::Hold(target)),
            ("RELEASE", _) if line.split_whitespace().count() == 2 => Ok(Command::Release(target)),
            ("DELETE" | "HOLD" | "RELEASE", _) => Err(format!("{verb} needs an id or ALL")),
            _ => Err(format!("unknown command {verb:?}")),
        }
    }

    pub fn render(&self) -> String {
        let verb = match self {
            Command::Flush(_) => "FLUSH",
            Command::Delete(_) => "DELETE",
            Command::Hold(_) => "HOLD",
            Command::Release(_) => "RELEASE",
        };
        format!("{verb} {}\n", self.target().unwrap_or("ALL"))
    }
}

pub struct Request {
    pub command: Command,
    pub reply: Sender<Result<String, String>>,
}

/// How long a command may take: holding or deleting every message of a queue of a million
/// reads each one from disk.
const ANSWER_WITHIN: Duration = Duration::from_secs(300);

pub fn socket_path(spool: &Path) -> PathBuf {
    spool.join("control.sock")
}

/// The longest request read: a line, or a suppression batch (`remote::MAX_BATCH` entries).
const MAX_REQUEST: u64 = 2 << 20;

/// Listens on the control socket; each queue request goes to the scheduler through
/// `to_scheduler`, each suppression request to `suppressions`.
pub fn serve(
    spool: &Path,
    to_scheduler: Sender<Request>,
    suppressions: Arc<Suppressions>,
) -> std::io::Result<()> {
    let path = socket_path(spool);
    // A socket file left by a previous run (nothing answers on it) is replaced.
    if path.exists() && UnixStream::connect(&path).is_err() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = handle(stream, &to_scheduler, &suppressions) {
                    log::warn!("control: {e}");
                }
            }
        })?;
    Ok(())
}

fn handle(
    stream: UnixStream,
    to_scheduler: &Sender<Request>,
    suppressions: &Suppressions,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(Read::take(&stream, MAX_REQUEST));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim();
    let suppression = line
        .split_once(' ')
        .filter(|(verb, _)| verb.eq_ignore_ascii_case(remote::VERB));
    let answer = match suppression {
        Some((_, rest)) => remote::serve(rest, &mut reader, suppressions),
        None => queue_command(line, to_scheduler),
    };
    let out = match answer {
        Ok(text) => format!("ok {text}\n"),
        Err(text) => format!("error {text}\n"),
    };
    (&stream).write_all(out.as_bytes())
}

/// A queue command, carried out by the scheduler.
fn queue_command(line: &str, to_scheduler: &Sender<Request>) -> Result<String, String> {
    match Command::parse(line) {
        Err(e) => Err(e),
        Ok(command) => {
            let (tx, rx) = bounded(1);
            if to_scheduler.send(Request { command, reply: tx }).is_err() {
                Err("the scheduler is not running".into())
            } else {
                rx.recv_timeout(ANSWER_WITHIN)
                    .unwrap_or_else(|_| Err("no answer from the scheduler".into()))
            }
        }
    }
}

/// Why a request got no `ok`.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// No daemon listens on the spool's control socket.
    NoDaemon(String),
    /// The daemon answered `error ...`, or the exchange failed half-way.
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NoDaemon(e) | SendError::Failed(e) => f.write_str(e),
        }
    }
}

/// Client side: sends one command to the daemon owning `spool`.
pub fn send(spool: &Path, command: &Command) -> Result<String, String> {
    request(spool, &command.render()).map_err(|e| e.to_string())
}

/// Client side: sends one request (its lines, each ending in a line feed) to the daemon
/// owning `spool` and reads its answer.
pub fn request(spool: &Path, text: &str) -> Result<String, SendError> {
    let path = socket_path(spool);
    let stream = UnixStream::connect(&path).map_err(|e| {
        SendError::NoDaemon(format!(
            "no mxrelay daemon answers on {} ({e})",
            path.display()
        ))
    })?;
    let failed = |e: std::io::Error| SendError::Failed(e.to_string());
    stream
        .set_read_timeout(Some(ANSWER_WITHIN + Duration::from_secs(5)))
        .map_err(failed)?;
    (&stream).write_all(text.as_bytes()).map_err(failed)?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(failed)?;
    match line.trim_end().split_once(' ') {
        Some(("ok", text)) => Ok(text.to_string()),
        Some(("error", text)) => Err(SendError::Failed(text.to_string())),
        _ => Err(SendError::Failed(format!("unexpected answer {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let id = "0006612FE2C56A9C-0000".to_string();
        for c in [
            Command::Flush(None),
            Command::Flush(Some(id.clone())),
            Command::Delete(Some(id.clone())),
            Command::Delete(None),
            Command::Hold(Some(id.clone())),
            Command::Release(Some(id)),
        ] {
            assert_eq!(Command::parse(c.render().trim()), Ok(c));
        }
        assert!(Command::parse("DELETE").is_err());
        assert!(Command::parse("DELETE ../../etc").is_err());
        assert!(Command::parse("REBOOT").is_err());
    }
}
