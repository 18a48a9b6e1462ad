//! Length-sorted batching, the one definition shared by the server's batcher and every offline
//! pass (training's frozen-encoder embedding, fine-tuning, evaluation).
//!
//! Padding is wasted compute: a batch costs `longest × texts` token positions whatever the
//! real lengths are. Sorting by length and cutting where padding would grow past a share of
//! the real tokens keeps that waste small, while still giving the matrix multiplies rows
//! enough to be efficient.
use std::ops::Range;

/// Indices of `lengths` sorted by length, cut into batches of at most `max_texts` texts and
/// `max_padded_tokens` padded tokens (a single text longer than that still gets its own batch).
pub fn sorted_batches(lengths: &[usize], max_texts: usize, max_padded_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so this text is the longest of the batch if it joins.
        let padded = lengths[i] * (current.len() + 1);
        if !current.is_empty() && (current.len() >= max_texts.max(1) || padded > max_padded_tokens) {
            out.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Splits lengths that are already sorted ascending into runs whose padding stays under a third
/// of their real tokens (runs of at most 256 padded tokens are never split: too small to matter),
/// so one long text does not pad a whole batch.
pub fn split_by_padding(sorted: &[usize]) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut real = 0usize;
    for (i, &len) in sorted.iter().enumerate() {
        let padded = len * (i - start + 1);
        if i > start && padded > 256 && padded * 3 > (real + len) * 4 {
            groups.push(start..i);
            start = i;
            real = 0;
        }
        real += len;
    }
    if start < sorted.len() {
        groups.push(start..sorted.len());
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_batches_cover_every_index_once_in_length_order_within_limits() {
        let lengths = [5, 1, 9, 3, 3, 100, 2, 7];
        let batches = sorted_batches(&lengths, 3, 20);
        let flat: Vec<usize> = batches.iter().flatten().copied().collect();
        let mut seen = flat.clone();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        // Length order across the whole sequence.
        assert!(flat.windows(2).all(|w| lengths[w[0]] <= lengths[w[1]]));
        for b in &batches {
            assert!(b.len() <= 3);
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(longest * b.len() <= 20 || b.len() == 1, "{b:?}");
        }
        // The 100-token text is alone: it exceeds the budget by itself.
        assert_eq!(batches.last().unwrap(), &vec![5]);
        assert_eq!(sorted_batches(&[], 4, 10), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn split_by_padding_cuts_before_a_long_text() {
        // 40 short texts of 8 tokens, then one of 200: padding it with the short ones would cost
        // 41 × 200 positions for 520 real tokens.
        let mut sorted = vec![8; 40];
        sorted.push(200);
        assert_eq!(split_by_padding(&sorted), vec![0..40, 40..41]);
        // Small batches are left alone even when uneven.
        assert_eq!(split_by_padding(&[1, 2, 60]), vec![0..3]);
        // Equal lengths never split.
        assert_eq!(split_by_padding(&[16; 64]), vec![0..64]);
        assert!(split_by_padding(&[]).is_empty());
    }
}
