//! Two small containers that keep the audit's memory proportional to the number of aggregates,
//! not of records: interned names and sets of revisions kept as ranges.

use std::collections::HashMap;

/// Names seen many times (event types, SKUs, user ids), stored once and referred to by number.
#[derive(Debug, Default)]
pub struct Symbols {
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl Symbols {
    /// The number of `name`, adding it when new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.to_owned());
        self.index.insert(name.to_owned(), i);
        i
    }

    /// The name of number `i`.
    pub fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("?", String::as_str)
    }
}

/// A set of revisions as sorted, disjoint, non-adjacent inclusive ranges: a stock row with
/// ten thousand consecutive revisions costs one range.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet(Vec<(i64, i64)>);

impl RangeSet {
    /// Whether `n` is in the set.
    #[cfg(test)]
    pub fn contains(&self, n: i64) -> bool {
        let i = self.0.partition_point(|r| r.1 < n);
        self.0.get(i).is_some_and(|r| r.0 <= n)
    }

    /// Adds `n`; returns whether it was new.
    pub fn insert(&mut self, n: i64) -> bool {
        let i = self.0.partition_point(|r| r.1 < n);
        if self.0.get(i).is_some_and(|r| r.0 <= n) {
            return false;
        }
        let joins_left = i > 0 && self.0[i - 1].1 == n - 1;
        let joins_right = self.0.get(i).is_some_and(|r| r.0 == n + 1);
        match (joins_left, joins_right) {
            (true, true) => {
                self.0[i - 1].1 = self.0[i].1;
                self.0.remove(i);
            }
            (true, false) => self.0[i - 1].1 = n,
            (false, true) => self.0[i].0 = n,
            (false, false) => self.0.insert(i, (n, n)),
        }
        true
    }

    /// The ranges, for tests and reports.
    #[cfg(test)]
    pub fn ranges(&self) -> &[(i64, i64)] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_stored_once() {
        let mut s = Symbols::default();
        let a = s.intern("OrderPlaced");
        assert_eq!(s.intern("OrderPlaced"), a);
        let b = s.intern("OrderConfirmed");
        assert_ne!(a, b);
        assert_eq!(s.name(b), "OrderConfirmed");
        assert_eq!(s.name(99), "?");
    }

    #[test]
    fn ranges_merge_and_answer() {
        let mut set = RangeSet::default();
        for n in [5, 1, 3, 2, 9, 4] {
            assert!(set.insert(n));
        }
        assert!(!set.insert(3));
        assert_eq!(set.ranges(), &[(1, 5), (9, 9)]);
        assert!(set.contains(1) && set.contains(5) && set.contains(9));
        assert!(!set.contains(6) && !set.contains(0) && !set.contains(10));
        set.insert(7);
        set.insert(8);
        set.insert(6);
        assert_eq!(set.ranges(), &[(1, 9)]);
    }
}
