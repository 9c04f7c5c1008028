//! A fixed-size set of cluster indexes stored as a bitset.

/// A set of cluster indexes `0..len`, one bit per cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterSet {
    words: Vec<u64>,
    len: usize,
}

impl ClusterSet {
    /// The empty set over `len` clusters.
    pub(crate) fn empty(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// The set of all `len` clusters.
    pub(crate) fn full(len: usize) -> Self {
        let mut words = vec![u64::MAX; len.div_ceil(64)];
        let rest = len % 64;
        if rest != 0
            && let Some(last) = words.last_mut()
        {
            *last = (1u64 << rest) - 1;
        }
        Self { words, len }
    }

    /// Adds cluster `index`.
    pub(crate) fn insert(&mut self, index: usize) {
        debug_assert!(index < self.len);
        self.words[index / 64] |= 1u64 << (index % 64);
    }

    /// Whether cluster `index` is in the set.
    pub(crate) fn contains(&self, index: usize) -> bool {
        self.words
            .get(index / 64)
            .is_some_and(|word| word & (1u64 << (index % 64)) != 0)
    }

    /// Keeps only the clusters that are also in `other`.
    pub(crate) fn intersect_with(&mut self, other: &ClusterSet) {
        debug_assert_eq!(self.len, other.len);
        for (word, other) in self.words.iter_mut().zip(&other.words) {
            *word &= other;
        }
    }

    /// The clusters in both sets.
    pub(crate) fn intersection(&self, other: &ClusterSet) -> ClusterSet {
        let mut result = self.clone();
        result.intersect_with(other);
        result
    }

    /// Whether the set holds no cluster.
    pub(crate) fn is_empty(&self) -> bool {
        self.words.iter().all(|&word| word == 0)
    }

    /// The cluster indexes in the set, in increasing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(at, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(at * 64 + bit)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ClusterSet;

    #[test]
    fn full_set_holds_exactly_len_clusters() {
        for len in [0, 1, 63, 64, 65, 130] {
            let full = ClusterSet::full(len);
            assert_eq!(
                full.iter().collect::<Vec<_>>(),
                (0..len).collect::<Vec<_>>()
            );
            assert!(!full.contains(len));
            assert_eq!(full.is_empty(), len == 0);
        }
    }

    #[test]
    fn insert_contains_intersect() {
        let mut a = ClusterSet::empty(130);
        let mut b = ClusterSet::empty(130);
        for i in [0, 5, 64, 129] {
            a.insert(i);
        }
        for i in [5, 63, 129] {
            b.insert(i);
        }
        assert!(a.contains(64) && !a.contains(63));
        assert_eq!(a.intersection(&b).iter().collect::<Vec<_>>(), vec![5, 129]);
        a.intersect_with(&ClusterSet::empty(130));
        assert!(a.is_empty());
    }
}
