//! [`InOrder`]: puts results that arrive in completion order back in input
//! order.

/// Collects one value per index, whatever order they arrive in.
pub(crate) struct InOrder<T>(Vec<Option<T>>);

/// Room reserved up front at most: a size hint is only a hint, and one that
/// overstates must not allocate for inputs that never come.
const MAX_RESERVED: usize = 1024;

impl<T> InOrder<T> {
    /// Room for `expected` values (capped); more are accepted.
    pub(crate) fn new(expected: usize) -> Self {
        let mut slots = Vec::new();
        slots.resize_with(expected.min(MAX_RESERVED), || None);
        Self(slots)
    }

    pub(crate) fn place(&mut self, index: usize, value: T) {
        if index >= self.0.len() {
            self.0.resize_with(index + 1, || None);
        }
        self.0[index] = Some(value);
    }

    /// The first `count` values in index order (the number of inputs the
    /// fan-out actually had), in the same allocation where the layouts
    /// allow (std collects `vec::IntoIter` + `map` in place).
    ///
    /// # Panics
    ///
    /// If an index below `count` was never placed. The engine ends every
    /// input exactly once (the property tests hold it to that), so this is
    /// a bug in the crate, not in its input; like every broken invariant
    /// in the crate, it panics with a message starting `fanout bug:`
    /// rather than inventing a result.
    pub(crate) fn finish(mut self, count: usize) -> Vec<T> {
        self.0.truncate(count);
        assert!(
            self.0.len() == count,
            "fanout bug: {count} inputs but only {} results",
            self.0.len()
        );
        self.0
            .into_iter()
            .map(|slot| slot.expect("fanout bug: an input ended without a result"))
            .collect()
    }
}
