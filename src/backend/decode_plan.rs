//! The split-KV schedule of the Hopper MLA decode (`csrc/sm90/mla/decode_fast.cu`): each query
//! row's keys (positions `0..=pos`, or the entries of its top-k row) cut into work items of
//! whole tiles, about equally long across the batch, so that the grid fills the GPU whether the
//! batch is one long context or many short ones. A row with one item gets its output from it;
//! the items of a split row write partials into consecutive slots of a compact workspace (one
//! per split item, not per row times the most splits), which the combine merges row by row.
//! Made on the host (it needs only the rows' key counts) and uploaded with the step's metadata;
//! plain code, so it is tested everywhere (`tests/mla_index_math.rs` also replays a plan through
//! a host emulation of the kernel).

/// The `part` of an item that is its row's only one: it writes the output itself.
pub const WHOLE: u32 = u32::MAX;

/// Tiles an item gets at least where a row is split: each item also loads its 64 heads' queries
/// (147 KB of f32, as much as 3.5 tiles of FP8 keys), so shorter items would cost more than
/// the parallelism they bring.
pub const MIN_SPLIT_TILES: usize = 4;

/// One CTA's keys: query row `row`, keys `begin..end`, and the workspace slot of its partials
/// (or [`WHOLE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkItem {
    pub row: u32,
    pub begin: u32,
    pub end: u32,
    pub part: u32,
}

/// A split row for the combine: its partials are slots `first..first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merge {
    pub row: u32,
    pub first: u32,
    pub count: u32,
}

/// The items of one decode call, the split rows, and the workspace slots (split items) in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodePlan {
    pub items: Vec<WorkItem>,
    pub merges: Vec<Merge>,
    pub parts: usize,
}

impl DecodePlan {
    /// The items as the kernel reads them: 4 u32 each.
    pub fn words(&self) -> Vec<u32> {
        self.items.iter().flat_map(|w| [w.row, w.begin, w.end, w.part]).collect()
    }

    /// The split rows as the combine reads them: 3 u32 each.
    pub fn merge_words(&self) -> Vec<u32> {
        self.merges.iter().flat_map(|m| [m.row, m.first, m.count]).collect()
    }
}

/// Cuts each row's `keys[row]` keys into items of whole `tile`s. The tiles of all rows are
/// shared out among about `ctas / ctas_per_item` items (each item runs as `ctas_per_item` CTAs,
/// one per group of heads): a row gets as many items as its share of the batch's tiles calls
/// for, each at least [`MIN_SPLIT_TILES`] long, at most `max_splits` per row, at least one per
/// row (an empty one where the row has no keys). Items of a row are consecutive, in key order.
/// Every key count must fit a u32 (the launcher checks).
pub fn decode_plan(keys: &[usize], tile: usize, ctas_per_item: usize, ctas: usize, max_splits: usize) -> DecodePlan {
    let tile = tile.max(1);
    let tiles: Vec<usize> = keys.iter().map(|k| k.div_ceil(tile)).collect();
    let total: usize = tiles.iter().map(|&t| t.max(1)).sum();
    let target = (ctas / ctas_per_item.max(1)).max(1);
    let budget = total.div_ceil(target).max(MIN_SPLIT_TILES);
    let pieces: Vec<(usize, usize)> = tiles
        .iter()
        .map(|&t| {
            let want = t.div_ceil(budget).clamp(1, max_splits.max(1));
            let per = t.div_ceil(want).max(1);
            (t.div_ceil(per).max(1), per)
        })
        .collect();
    let mut items = Vec::with_capacity(pieces.iter().map(|p| p.0).sum());
    let mut merges = Vec::new();
    let mut parts = 0usize;
    for (row, (&k, &(n, per))) in keys.iter().zip(&pieces).enumerate() {
        // Rows, key bounds and slots fit a u32: the caller checked the rows and key counts, and
        // there are fewer slots than keys.
        if n > 1 {
            merges.push(Merge { row: row as u32, first: parts as u32, count: n as u32 });
        }
        for s in 0..n {
            let begin = (s * per * tile).min(k);
            let end = ((s + 1) * per * tile).min(k);
            let part = if n > 1 { (parts + s) as u32 } else { WHOLE };
            items.push(WorkItem { row: row as u32, begin: begin as u32, end: end as u32, part });
        }
        if n > 1 {
            parts += n;
        }
    }
    DecodePlan { items, merges, parts }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of every row in exactly one item, items starting on tile boundaries, splits
    /// numbered 0.. per row and within the stride, and the grid near its target.
    #[test]
    fn every_key_in_exactly_one_item() {
        let cases: Vec<Vec<usize>> = vec![
            vec![1],
            vec![0],
            vec![0, 5, 0],
            vec![65536],
            vec![4096; 128],
            vec![2048; 128],
            vec![1, 100_000, 3, 64, 65, 127, 128, 129],
            (0..130).map(|i| i * 37 % 3000).collect(),
        ];
        for keys in &cases {
            for (per_item, ctas, max_splits) in [(1, 132, 64), (2, 132, 64), (2, 264, 8), (3, 1, 64)] {
                let plan = decode_plan(keys, 64, per_item, ctas, max_splits);
                let mut seen: Vec<Vec<u32>> = keys.iter().map(|&k| vec![0; k]).collect();
                let mut next = vec![0u32; keys.len()];
                let mut slots = vec![None; plan.parts];
                let mut items_of = vec![0u32; keys.len()];
                for w in &plan.items {
                    let r = w.row as usize;
                    assert!(w.begin <= w.end && w.end as usize <= keys[r], "{w:?}");
                    assert_eq!(w.begin, next[r], "items of a row are consecutive: {w:?}");
                    assert_eq!(w.begin % 64, 0);
                    next[r] = w.end;
                    items_of[r] += 1;
                    if w.part != WHOLE {
                        assert!(slots[w.part as usize].replace(r).is_none(), "slot {} twice", w.part);
                    }
                    for c in &mut seen[r][w.begin as usize..w.end as usize] {
                        *c += 1;
                    }
                }
                for (r, s) in seen.iter().enumerate() {
                    assert!(s.iter().all(|&c| c == 1), "row {r}: a key missed or twice");
                    assert_eq!(next[r] as usize, keys[r]);
                    assert!((1..=max_splits as u32).contains(&items_of[r]), "row {r}: {} items", items_of[r]);
                }
                // Every slot used once; each split row merged once, over exactly its items' slots.
                assert!(slots.iter().all(Option::is_some));
                let mut merged = vec![false; keys.len()];
                for m in &plan.merges {
                    let r = m.row as usize;
                    assert!(!merged[r] && m.count > 1 && m.count == items_of[r]);
                    merged[r] = true;
                    for s in m.first..m.first + m.count {
                        assert_eq!(slots[s as usize], Some(r));
                    }
                }
                for (r, &n) in items_of.iter().enumerate() {
                    assert_eq!(merged[r], n > 1, "row {r}");
                }
                // At most one item per budget of tiles, plus one per row for its remainder.
                let target = (ctas / per_item).max(1);
                assert!(plan.items.len() <= target + keys.len(), "{} items for {target}", plan.items.len());
            }
        }
    }

    #[test]
    fn long_rows_split_and_short_batches_do_not() {
        // One 64k context: split to fill the GPU, each item at least MIN_SPLIT_TILES tiles.
        let plan = decode_plan(&[65536], 64, 2, 132, 64);
        assert_eq!((plan.items.len(), plan.parts), (64, 64));
        assert_eq!(plan.merge_words(), vec![0, 0, 64]);
        // 128 rows of 4k: the batch fills the GPU, no split.
        let plan = decode_plan(&[4096; 128], 64, 2, 132, 64);
        assert_eq!((plan.items.len(), plan.parts), (128, 0));
        assert!(plan.items.iter().all(|w| w.part == WHOLE) && plan.merges.is_empty());
        assert_eq!(plan.words()[..4], [0, 0, 4096, WHOLE]);
        // A long row among short ones: only its items take workspace.
        let mut keys = vec![64; 127];
        keys.push(65536);
        let plan = decode_plan(&keys, 64, 2, 132, 64);
        assert_eq!(plan.merges.len(), 1);
        assert_eq!(plan.parts, plan.merges[0].count as usize);
        assert!(plan.parts > 1 && plan.parts <= 64);
    }
}
