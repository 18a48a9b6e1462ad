//! Length-sorted batching for the offline passes (training's frozen-encoder embedding,
//! fine-tuning, evaluation).
//!
//! Fine-tuning runs the padded graph, where a batch costs `longest × texts` token positions
//! whatever the real lengths are: sorting by length and capping the padded tokens keeps that
//! waste small. (Inference packs sequences without padding; there, sorting only bounds a
//! batch's memory.)

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
}
