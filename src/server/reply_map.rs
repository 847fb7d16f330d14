//! The one place where errors from outside the protocol core become SMTP replies.

use std::io;

use crate::smtp::reply::{self, Enhanced, Reply};
use crate::smtp::session::Refusal;
use crate::transform::TransformError;

/// A spool failure while accepting a message. Out of space (or quota) is its own code,
/// `452 4.3.1`; anything else (EIO, a filesystem remounted read-only) is `451 4.3.0`. Either
/// way nothing was kept, the client may try again, and the session goes on.
pub fn spool_error(e: &io::Error) -> (Refusal, Reply) {
    let full = matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        );
    match full {
        true => (Refusal::Storage, reply::insufficient_storage()),
        false => (Refusal::Storage, reply::local_error()),
    }
}

/// MAIL while the spool is short of space (`--min-free-space`, or less free above it than
/// the message's declared SIZE).
pub fn short_of_space() -> (Refusal, Reply) {
    (Refusal::Storage, reply::insufficient_storage())
}

/// A transform that would not (or could not) take the message.
pub fn transform_error(e: &TransformError) -> (Refusal, Reply) {
    match e {
        TransformError::HeaderTooLarge => (
            Refusal::Size,
            Reply::new(
                552,
                Some(Enhanced(5, 3, 4)),
                "Message header section too large",
            ),
        ),
        TransformError::Refused(why) => (
            Refusal::Other,
            Reply::new(
                550,
                Some(Enhanced(5, 7, 1)),
                format!("Message refused: {why}"),
            ),
        ),
        TransformError::Failed(why) => {
            log::error!("transform failed: {why}");
            (Refusal::Other, reply::local_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_spool_errors() {
        let errno = io::Error::from_raw_os_error;
        let cases = [
            (
                errno(libc::ENOSPC),
                "452 4.3.1 Insufficient system storage\r\n",
            ),
            (
                errno(libc::EDQUOT),
                "452 4.3.1 Insufficient system storage\r\n",
            ),
            (
                io::Error::from(io::ErrorKind::StorageFull),
                "452 4.3.1 Insufficient system storage\r\n",
            ),
            (
                errno(libc::EIO),
                "451 4.3.0 Local error in processing, try again later\r\n",
            ),
            (
                errno(libc::EROFS),
                "451 4.3.0 Local error in processing, try again later\r\n",
            ),
            (
                io::Error::other("boom"),
                "451 4.3.0 Local error in processing, try again later\r\n",
            ),
        ];
        for (e, want) in cases {
            let (why, r) = spool_error(&e);
            assert_eq!((why, r.render().as_str()), (Refusal::Storage, want), "{e}");
        }
        assert_eq!(short_of_space().1, reply::insufficient_storage());
    }
}
