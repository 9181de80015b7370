//! CPU-bound work over the items of a large job, split across two threads: parsing and sealing
//! 100,000 tokens is about a quarter of a second of one core, during which the request holds
//! its worker thread anyway and the database has nothing to do yet.

use std::panic;
use std::thread;

/// `f(first, part)` for each part of `items`, in order, where `first` is the index of the part's
/// first item: one part when there are fewer than `split_from` items, else two halves, the second
/// on a thread of its own. Each part can so keep its own bounded state (a capped error list).
pub fn parts<T: Sync, R: Send>(
    items: &[T],
    split_from: usize,
    f: impl Fn(usize, &[T]) -> R + Sync,
) -> Vec<R> {
    if items.len() < split_from.max(2) {
        return vec![f(0, items)];
    }
    let (head, tail) = items.split_at(items.len() / 2);
    thread::scope(|s| {
        let later = s.spawn(|| f(head.len(), tail));
        let first = f(0, head);
        vec![
            first,
            later.join().unwrap_or_else(|p| panic::resume_unwind(p)),
        ]
    })
}

/// `f(i, &items[i])` for every item, in item order, split as [`parts`] splits.
pub fn map<T: Sync, R: Send>(
    items: &[T],
    split_from: usize,
    f: impl Fn(usize, &T) -> R + Sync,
) -> Vec<R> {
    parts(items, split_from, |first, part| {
        part.iter()
            .enumerate()
            .map(|(i, item)| f(first + i, item))
            .collect::<Vec<R>>()
    })
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_in_order_with_its_index_split_or_not() {
        let items: Vec<u32> = (0..1001).collect();
        for split_from in [0, 2, 1000, 5000] {
            let out = map(&items, split_from, |i, &x| (i, x * 2));
            assert_eq!(out.len(), 1001);
            assert!(out
                .iter()
                .enumerate()
                .all(|(n, &(i, y))| i == n && y == 2 * n as u32));
        }
        assert!(map(&[] as &[u32], 0, |_, &x| x).is_empty());
        assert_eq!(map(&[7u32], 0, |i, &x| (i, x)), [(0, 7)]);
    }

    #[test]
    fn the_second_thread_does_half_the_work() {
        let items: Vec<u32> = (0..100).collect();
        let caller = thread::current().id();
        let threads = map(&items, 10, |_, _| thread::current().id());
        assert!(threads[..50].iter().all(|&t| t == caller));
        assert!(threads[50..].iter().all(|&t| t != caller));
        let firsts = parts(&items, 10, |first, part| (first, part.len()));
        assert_eq!(firsts, [(0, 50), (50, 50)]);
        assert_eq!(
            parts(&items, 101, |first, part| (first, part.len())),
            [(0, 100)]
        );
    }
}
