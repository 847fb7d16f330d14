//! SPF (RFC 7208): placeholder.
