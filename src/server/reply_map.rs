//! The one place where errors from outside the protocol core become SMTP replies.

use std::io;

use crate::smtp::reply::{self, Enhanced, Reply};
use crate::smtp::session::Refusal;
use crate::transform::TransformError;

/// A spool failure while accepting a message: out of space is its own code (RFC 3463 4.3.1).
pub fn spool_error(e: &io::Error) -> Reply {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull {
        Reply::new(452, Some(Enhanced(4, 3, 1)), "Insufficient system storage")
    } else {
        reply::local_error()
    }
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
        assert_eq!(
            spool_error(&io::Error::from_raw_os_error(libc::ENOSPC)).code,
            452
        );
        assert_eq!(
            spool_error(&io::Error::other("boom")).render(),
            "451 4.3.0 Local error in processing, try again later\r\n"
        );
    }
}
