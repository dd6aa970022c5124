//! A small pool for `--jobs`: scoped threads take items off a shared index.

use crate::error::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Run `work(index, item)` for every item on up to `jobs` threads, largest share of
/// the work to whoever is free. The first error stops the remaining items (items
/// already running finish) and is returned.
pub fn try_for_each<T: Sync>(
    jobs: usize,
    items: &[T],
    work: impl Fn(usize, &T) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<crate::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(items.len()).max(1) {
            scope.spawn(|| loop {
                if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return };
                if let Err(e) = work(i, item) {
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(e);
                    }
                    return;
                }
            });
        }
    });
    match failure.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn visits_every_item_once_and_stops_on_error() {
        let seen = Mutex::new(Vec::new());
        try_for_each(3, &[1, 2, 3, 4, 5], |i, v| {
            seen.lock().unwrap().push((i, *v));
            Ok(())
        })
        .unwrap();
        let mut s = seen.into_inner().unwrap();
        s.sort();
        assert_eq!(s, vec![(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]);
        let r = try_for_each(1, &[1, 2, 3], |_, v| {
            if *v == 2 {
                Err(Error::invalid("two"))
            } else {
                Ok(())
            }
        });
        assert_eq!(r.unwrap_err().to_string(), "two");
        try_for_each::<u8>(4, &[], |_, _| Ok(())).unwrap();
    }
}
