//! Helpers shared by the fuzz targets.

/// Cuts `data` into pieces whose lengths follow from `seed` (a small xorshift generator):
/// mostly short pieces (down to single bytes and empty ones), now and then a long one, so
/// that every state of a streaming parser meets a piece boundary. The pieces joined are
/// `data`.
pub fn pieces(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    let mut state = (u32::from(seed).wrapping_mul(0x9E37_79B9)) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let r = next();
        let len = match r % 8 {
            0 => 0,
            1..=4 => 1 + (r >> 8) as usize % 4,
            5 | 6 => 1 + (r >> 8) as usize % 64,
            _ => 1 + (r >> 8) as usize % 4096,
        };
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// Splits the first byte off the input (a seed for [`pieces`]); 0 for empty input.
pub fn seed_and_rest(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&seed, rest)) => (seed, rest),
        None => (0, data),
    }
}
