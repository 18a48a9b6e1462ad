//! Local-hour windows, as rules (`when.hours`) and guardrails (`quiet_hours`) write them:
//! `[from, to)`, wrapping past midnight when `from > to` (`[22, 8]` is 22:00–07:59).

/// Whether `[from, to]` is a window: hours 0–24 and not empty.
pub(crate) fn valid([from, to]: [u8; 2]) -> bool {
    from <= 23 && to <= 24 && from != to
}

/// Whether local hour `h` lies in the window.
pub(crate) fn contains([from, to]: [u8; 2], h: u8) -> bool {
    if from < to {
        from <= h && h < to
    } else {
        h >= from || h < to
    }
}
