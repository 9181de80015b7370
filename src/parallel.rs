//! CPU-bound work over the items of a large job, split across two threads: parsing and sealing
//! 100,000 tokens is about a quarter of a second of one core, during which the request holds
//! its worker thread anyway and the database has nothing to do yet.

use std::panic;
use std::thread;

/// `f(i, &items[i])` for every item, in item order: on the calling thread when there are fewer
/// than `split_from` items, else half of them on a second thread.
pub fn map<T: Sync, R: Send>(
    items: &[T],
    split_from: usize,
    f: impl Fn(usize, &T) -> R + Sync,
) -> Vec<R> {
    let run = |first: usize, part: &[T]| -> Vec<R> {
        part.iter()
            .enumerate()
            .map(|(i, item)| f(first + i, item))
            .collect()
    };
    if items.len() < split_from.max(2) {
        return run(0, items);
    }
    let (head, tail) = items.split_at(items.len() / 2);
    thread::scope(|s| {
        let later = s.spawn(|| run(head.len(), tail));
        let mut all = run(0, head);
        all.extend(later.join().unwrap_or_else(|p| panic::resume_unwind(p)));
        all
    })
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
    }
}
